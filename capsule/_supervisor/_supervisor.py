"""The supervisor: starts an app's features in sandboxed containers and keeps the app running.

Lifecycle and restart strategies (one_for_one, one_for_all, rest_for_one) with
restart intensity, backoff and quarantine; calls from the host program to features.
Written on anyio (trio by default, asyncio works too). It never unpickles or
evaluates anything a container sends, and never holds a lock across a call.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, final

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from capsule._broker._audit import AUDIT_MAX, AUDIT_SHARE, AuditLog, default_audit_path
from capsule._broker._broker import Broker, Target
from capsule._broker._host import Stream, Subscription
from capsule._container._feature import Feature
from capsule._manifest import App, Candidate
from capsule._supervisor._announce import Announcer
from capsule._supervisor._handle import (
    FeatureHandle,
    FeatureState,
    FeatureStatistics,
    HeldToken,
    NoPublicConstructor,
)
from capsule._supervisor._history import History, VersionRecord
from capsule._supervisor._instance import Ending, Instance
from capsule._supervisor._machinery import Machinery
from capsule._supervisor._ondemand import OnDemand
from capsule._supervisor._plan import Planner, Version, container_uids, default_state_dir
from capsule._supervisor._plugins import PluginInfo, Plugins
from capsule._supervisor._recovery import Recovery
from capsule._supervisor._renewal import Renewer
from capsule._supervisor._restart import RestartTracker
from capsule._supervisor._rundir import RunDir
from capsule._supervisor._stats import SupervisorStatistics
from capsule._supervisor._update import UpdateReport, Updates
from capsule._supervisor._variants import Variants, VariantsStatus
from capsule._supervisor._versions import note_start
from capsule._supervisor._views import ViewTimeouts
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule._tokens._keys import KeyRing
from capsule.errors import (
    CapsuleError,
    FeatureError,
    FeatureStartError,
    FeatureUnavailableError,
    UpdateError,
)

__all__ = [
    "FeatureHandle",
    "FeatureState",
    "FeatureStatistics",
    "HeldToken",
    "PluginInfo",
    "Supervisor",
    "SupervisorStatistics",
    "UpdateReport",
    "VariantsStatus",
    "container_uids",
    "default_state_dir",
]

_log = structlog.get_logger("capsule.supervisor")


@final
class Supervisor(metaclass=NoPublicConstructor):
    """A running app. Obtained from ``async with capsule.open_supervisor(app) as sup``."""

    def __init__(
        self,
        app: App,
        task_group: anyio.abc.TaskGroup,
        *,
        inline: Mapping[str, Feature],
        start_timeout: float,
        stop_timeout: float,
        call_timeout: float,
        audit: Path | None,
        state_dir: Path,
        view_timeouts: ViewTimeouts,
        environments: Mapping[str, tuple[tuple[str, str], ...]],
        token_ttl: float,
        history: History,
    ) -> None:
        self.app = app
        self.state_dir = state_dir  # absolute: open_supervisor resolved it
        self._history = history  # of state_dir: the versions each feature ran
        self.view_timeouts = view_timeouts
        # every background task of the app, shielded: a cancelled block around
        # open_supervisor must not end them before _close has stopped the containers
        self._tg = Services(task_group)
        self._plan = Planner(
            app,
            self.state_dir,
            inline=inline,
            start_timeout=start_timeout,
            environments=environments,
        )
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.call_timeout = call_timeout
        self._handles: dict[str, FeatureHandle] = {
            name: FeatureHandle._create(app.features[name], index, grant=app.grants[name])
            for index, name in enumerate(app.start_order)
        }
        self._order = list(app.start_order)
        self._authority = TokenAuthority(KeyRing.generate())
        self._rundir = RunDir()
        self._audit = AuditLog(
            audit or default_audit_path(app.manifest.name, self._rundir.name),
            app=app.manifest.name,
            run=self._rundir.name,
            max_bytes=app.manifest.audit_max or AUDIT_MAX,
            share=app.manifest.audit_share or AUDIT_SHARE,
        )
        self._broker = Broker(
            self._authority,
            self._audit,
            self._target,
            self._tg,
            call_timeout=call_timeout,
            limits={name: policy.limits for name, policy in app.manifest.policies.items()},
        )
        self._renewer = Renewer(
            self._authority,
            self._broker,
            self._audit,
            ttl=token_ttl,
            view_timeout=view_timeouts.probe,
        )
        self._announcer = Announcer(self._broker)
        for handle in self._handles.values():
            self._announcer.watch(handle)
        self._lock = anyio.Lock()
        self._recovery = Recovery(
            app.manifest.strategy,
            handles=self._handles,
            order=self._order,
            lock=self._lock,
            task_group=self._tg,
            launch=self._launch,
            stop=self._stop,
            closing=lambda: self._closing,
        )
        self._ondemand = OnDemand(
            app,
            handles=self._handles,
            lock=self._lock,
            broker=self._broker,
            audit=self._audit,
            services=self._tg,
            launch=self._launch,
            stop=self._stop,
            closing=lambda: self._closing,
            timeout=start_timeout,
            grace=stop_timeout,
        )
        self._plugins = Plugins(
            app,
            self.state_dir,
            plan=self._plan,
            broker=self._broker,
            audit=self._audit,
            announcer=self._announcer,
            history=self._history,
            handles=self._handles,
            order=self._order,
            lock=self._lock,
            launch=self._launch,
            stop=self._stop,
        )
        self._machinery = Machinery(
            self._rundir,
            self._plan,
            authority=self._authority,
            broker=self._broker,
            audit=self._audit,
            services=self._tg,
            view_timeouts=view_timeouts,
            token_ttl=token_ttl,
        )
        self._started = 0
        self._closing = False
        self._updates = Updates(
            app,
            broker=self._broker,
            authority=self._authority,
            audit=self._audit,
            services=self._tg,
            launch=self._machinery.launch,
            adopt=self._adopt,
            relaunch=self._launch,
            lock=self._lock,
            stop_timeout=stop_timeout,
            start_timeout=start_timeout,
            history=history,
            renewer=self._renewer,
            announce=self._announcer.up,
        )
        self._variants = Variants(
            app,
            broker=self._broker,
            authority=self._authority,
            audit=self._audit,
            services=self._tg,
            launch=self._machinery.launch,
            adopt=self._adopt,
            updates=self._updates,
            state_dir=self.state_dir,
            stop_timeout=stop_timeout,
        )

    # -- public API -------------------------------------------------------------------

    def features(self) -> dict[str, FeatureHandle]:
        """Every feature of the app, in start order (installed plugins last)."""
        return dict(self._handles)

    def feature(self, name: str) -> FeatureHandle:
        try:
            return self._handles[name]
        except KeyError:
            removed = self._plugins.removed(name)
            if removed is not None:
                raise FeatureUnavailableError(name, removed.why) from None
            known = ", ".join(self._order)
            raise FeatureError(
                name, f"is not part of app {self.app.manifest.name!r} ({known})"
            ) from None

    def versions(self, name: str) -> tuple[VersionRecord, ...]:
        """The versions ``name`` ran, oldest first, as kept in the state directory across
        app restarts (at most the last 64 changes)."""
        found = self._history.versions(name)
        if not found and name not in self._handles:
            self.feature(name)  # raises FeatureError naming the app's features
        return found

    async def start(self, name: str) -> None:
        """Start a stopped feature and wait until it is ready (FeatureStartError otherwise)."""
        handle = self.feature(name)
        await self._ondemand.settled(handle)
        async with self._lock:
            if handle.state is FeatureState.RUNNING:
                return
            handle.wanted = True
            handle.restarts = RestartTracker(handle.manifest.restart)
            await self._launch(handle)
        if not handle.running:
            raise handle.last_error or FeatureStartError(name, "did not start")

    async def stop(self, name: str) -> None:
        """Stop a feature (stop message, grace period, then SIGKILL); it stays stopped."""
        handle = self.feature(name)
        await self._ondemand.settled(handle)
        async with self._lock:
            handle.wanted = False
            await self._stop(handle)

    async def restart(self, name: str) -> None:
        """Stop and start a feature again (not counted against its restart limit)."""
        handle = self.feature(name)
        await self._ondemand.settled(handle)
        async with self._lock:
            handle.wanted = True
            await self._stop(handle, keep_wanted=True)
            handle.restarts = RestartTracker(handle.manifest.restart)
            await self._launch(handle)
        if not handle.running:
            raise handle.last_error or FeatureStartError(name, "did not start")

    async def update(
        self,
        name: str,
        bundle: str | os.PathLike[str],
        *,
        approve: bool = False,
        dry_run: bool = False,
    ) -> UpdateReport:
        """Replace the running version of feature ``name`` by the bundle in ``bundle``, live.

        The new version starts beside the old one; new calls are held while the old one's
        calls drain and its state moves over (``export_state`` / ``import_state``); then
        calls go to the new version, which is on probation while the old one stays frozen.
        Returns once the new version serves (``dry_run``: what would happen, and the
        capability diff). ConfigError for a bad bundle, UpdateRefusedError for a request
        the app's policy does not approve, UpdateError for a widening without ``approve``
        or an update that did not happen (the old version serves on), and for a plugin
        added at run time (remove it and add the new version). See the guide,
        docs/guide/updates.md.
        """
        handle = self.feature(name)
        if any(plugin.name == name for plugin in self._plugins.installed()):
            raise UpdateError(
                name,
                "is a plugin added at run time, which is not updated in place: remove it and "
                f"add the new version (capsule plugin remove {name}; capsule plugin add DIR)",
            )
        if not dry_run:
            self._variants.refuse_while_running(name, "updated")
        return await self._updates.update(handle, Path(bundle), approve=approve, dry_run=dry_run)

    async def rollback(self, name: str) -> UpdateReport:
        """Go back to the version ``name`` ran before its last update: at once (a thaw and a
        switch) while the old one is kept, else a cold start of the previous version in
        the history. UpdateError when there is nothing to roll back to."""
        self._variants.refuse_while_running(name, "rolled back")
        return await self._updates.rollback(self.feature(name))

    async def set_variants(
        self,
        name: str,
        shares: Mapping[str, float],
        *,
        sticky: str | None = None,
        shadow: bool | None = None,
        approve: bool = False,
    ) -> VariantsStatus:
        """Run versions of ``name`` side by side, the broker splitting its calls by key:
        ``shares`` maps each version (the running one, one running already, or a bundle
        directory) to its percent share of the keys. Called again, it ramps the split (a
        variant whose share does not fall keeps its keys). ``sticky`` (``caller`` or
        ``payload.FIELD``) and ``shadow`` default to ``variants`` of the feature's policy;
        a shadow variant acts on nothing outside itself, and ``shadow=False`` on a running
        experiment leaves shadow mode. UpdateError when it cannot (shadow mode with shared
        storage among them); see docs/guide/variants.md."""
        handle = self.feature(name)
        return await self._variants.set(
            handle, shares, sticky=sticky, shadow=shadow, approve=approve
        )

    def variants(self, name: str) -> VariantsStatus | None:
        """The variants ``name`` runs with their figures, or None when it runs none."""
        self.feature(name)
        return self._variants.find(name)

    async def promote_variant(self, name: str, version: str) -> UpdateReport | None:
        """Make ``version`` the only version of ``name``: the other variants stop; a
        candidate then replaces the running version by a live update (None: it was it)."""
        return await self._variants.promote(self.feature(name), version)

    async def abort_variants(self, name: str) -> VariantsStatus:
        """Stop every variant of ``name`` but the running version; returns the last figures."""
        return await self._variants.abort(self.feature(name))

    async def install(
        self, bundle: str | os.PathLike[str], *, approve: bool = False
    ) -> FeatureHandle:
        """Install the feature bundle ``bundle`` into the running app as a plugin and return
        it once it is ready; it starts again with the app until :meth:`uninstall`.

        It is granted what its capsule.toml asks for within the app's ``[plugins]`` policy:
        a request the policy does not approve raises UpdateRefusedError (naming the file, line
        and key); a grant that widens what the app grants raises ApprovalRequiredError, which
        shows the capability diff, unless ``approve``. ConfigError for a bad bundle,
        FeatureError for a name the app already has, FeatureStartError when it does not start
        (nothing of it is then kept). Announced as ``capsule.service.up`` (``installed``).
        Cancelled once its checks passed, it still finishes (within the start timeout).
        """
        return await self._plugins.install(Path(bundle), approve=approve)

    async def review_plugin(self, bundle: str | os.PathLike[str]) -> Candidate:
        """What installing ``bundle`` would grant (``grant``, and ``diff``: ``diff.widens``
        when it needs ``approve``), checked as :meth:`install` checks it, without installing."""
        return await self._plugins.review(Path(bundle))

    async def uninstall(self, name: str, *, drain: float = 5.0, purge: bool = False) -> None:
        """Remove the plugin ``name``: new calls to it fail at once (FeatureUnavailableError,
        saying when it was removed), calls in flight get ``drain`` seconds to finish, then its
        container stops, its tokens (and those it delegated) are revoked, and its view, cgroup
        and run files go. ``purge`` deletes its private storage and copy-on-write changes too
        (kept otherwise, for a later install). Announced as ``capsule.service.down``
        (``removed``). FeatureError for a feature of app.toml or an unknown name. Cancelled,
        it still finishes (within the drain and the stop timeout)."""
        await self._plugins.uninstall(name, drain=drain, purge=purge)

    def plugins(self) -> tuple[PluginInfo, ...]:
        """The installed plugins, with their state (or why one did not start with the app)."""
        return self._plugins.installed()

    async def call(
        self,
        feature: str,
        service: str,
        payload: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a call's deadline travels with it
        key: str | None = None,
    ) -> Any:
        """Call ``service`` of ``feature`` with host authority; returns its reply.

        Waits (within the deadline) for a feature that is starting or restarting;
        fails at once with FeatureUnavailableError if it is stopped or quarantined,
        with FeatureCrashedError if it dies during the call, with RemoteError if the
        handler raised, with FeatureTimeoutError past ``timeout`` seconds (the
        handler is then cancelled). ``key`` picks the variant of a feature running
        variants (the same key, the same variant).
        """
        self.feature(feature)
        limit = self.call_timeout if timeout is None else timeout
        return await self._broker.host_call(feature, service, payload, limit, key)

    def stream(
        self,
        feature: str,
        service: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        window: int = 16,
    ) -> Stream:
        """Call a streaming service: ``async with sup.stream(...) as items: async for ...``.

        The service runs at most ``window`` values ahead of the reader; ``timeout``
        bounds the wait for each value.
        """
        self.feature(feature)
        limit = self.call_timeout if timeout is None else timeout
        return self._broker.host_stream(feature, service, payload, limit, window)

    async def publish(self, topic: str, payload: Any = None) -> int:
        """Publish an event with host authority; returns how many subscribers it reached."""
        delivered = self._broker.host_publish(topic, payload)
        await anyio.lowlevel.checkpoint()
        return delivered

    def subscribe(self, pattern: str, *, buffer: int = 256) -> Subscription:
        """Events on topics matching ``pattern`` (``spell.*``), from every feature.

        ``async with sup.subscribe("spell.*") as events: async for event in events``;
        a reader slower than the events loses the newest past ``buffer`` (counted).
        """
        return self._broker.host_subscribe(pattern, buffer)

    async def revoke(self, token_id: str) -> frozenset[str]:
        """Revoke a token (by its id) and everything derived from it; takes effect before
        the next message. Returns the ids revoked once nothing through the views they
        grant can succeed, open files included (see ``Instance.revoke_files``)."""
        revoked = self._broker.revoke(token_id)
        closing = revoked | self._renewer.view_keys(revoked)
        async with anyio.create_task_group() as tg:
            for instance in filter(None, (h.instance for h in self._handles.values())):
                tg.start_soon(instance.revoke_files, closing)
        return revoked

    def audit(
        self, event: str, *, feature: str, decision: str, reason: str = "", **fields: Any
    ) -> None:
        """Add a line to this run's audit log for something done from outside the broker:
        ``capsule run``'s control socket records what operators did through it. ``feature``
        is the feature acted on (or a name such as ``@control``); ``decision`` is ``operate``,
        ``refuse`` or another word (see ``capsule audit``)."""
        self._audit.record(event, feature=feature, decision=decision, reason=reason, **fields)

    @property
    def token_ttl(self) -> float:
        """Seconds each container's tokens live; each is renewed after 2/3 of that."""
        return self._renewer.ttl

    @property
    def audit_path(self) -> Path | None:
        """The JSON-lines file this run's audit events go to."""
        return self._audit.path

    def statistics(self) -> SupervisorStatistics:
        isolation, cgroups = self._machinery.isolation, self._machinery.cgroups
        audit = self._audit.statistics()
        return SupervisorStatistics(
            app=self.app.manifest.name,
            isolation="unknown" if isolation is None else isolation.level,
            cgroups="none" if cgroups is None else cgroups.support.describe(),
            features={name: h.statistics() for name, h in self._handles.items()},
            containers_started=self._started,
            restarts=sum(h.restarts.total for h in self._handles.values()),
            quarantined=tuple(
                n for n, h in self._handles.items() if h.state is FeatureState.QUARANTINED
            ),
            calls_routed=self._broker.routed,
            events_published=self._broker.events,
            allowed=audit.allowed,
            denied=audit.denied,
            audit_path=audit.path,
            variants=self._variants.statuses(),
        )

    # -- starting containers ----------------------------------------------------------

    async def _open(self) -> None:
        manifest = self.app.manifest
        isolation = await self._machinery.open(manifest.name, manifest.allow_missing)
        self._tg.start_soon(self._broker.deadlines.run)
        self._tg.start_soon(self._broker.outbox.run)
        self._tg.start_soon(self._audit.run)
        _log.info(
            "supervisor started",
            app=self.app.manifest.name,
            isolation=isolation.level,
            missing=list(isolation.missing),
        )
        self._tg.start_soon(self._ondemand.run)
        async with self._lock:
            for name in filter(self._ondemand.eager, self._order):  # on-demand: when needed
                handle = self._handles[name]
                handle.wanted = True
                await self._launch(handle)
        await self._plugins.restore()

    def _target(self, name: str) -> Target | None:
        """The feature the broker routes ``name`` to, or a removed plugin's tombstone."""
        return self._handles.get(name) or self._plugins.removed(name)

    async def _launch(self, handle: FeatureHandle) -> None:
        """Start one container for ``handle`` (lock held); on failure, hand it to restart logic."""
        handle._set(FeatureState.STARTING)
        handle.generation += 1
        try:
            instance, tokens = await self._machinery.launch(
                handle, Version(handle.manifest, handle.grant)
            )
        except (CapsuleError, OSError) as exc:
            error = (
                exc if isinstance(exc, FeatureError) else FeatureStartError(handle.name, str(exc))
            )
            handle.last_error = error
            handle.last_exit = f"failed to start: {exc}"
            _log.error("feature failed to start", feature=handle.name, error=str(exc))
            self._recovery.after_exit(handle, Ending(None, None, requested=False, reason=str(exc)))
            return
        handle.instance = instance
        handle.last_error = None
        handle._set(FeatureState.RUNNING)
        _log.info("feature running", feature=handle.name, pid=instance.pid)
        handle.renewal_error = None
        self._adopt(handle, instance, tokens)
        # on probation: not a version yet; a plugin's history is installs and removals
        if handle.name in self.app.features and self._updates.status(handle.name) is None:
            await anyio.to_thread.run_sync(note_start, self._history, handle.manifest)

    def _adopt(self, handle: FeatureHandle, instance: Instance, tokens: list[Token]) -> None:
        """Watch a started container of ``handle``: its exit, and its tokens' renewal."""
        self._started += 1
        instance.on_end = functools.partial(self._ended, handle, instance)
        self._tg.start_soon(self._renewer.keep, handle, instance, tokens)
        if instance.ended.is_set():  # it ended between ready and here
            self._ended(handle, instance, instance.ending)  # type: ignore[arg-type]

    def _ended(self, handle: FeatureHandle, instance: Instance, ending: Ending) -> None:
        """A container ended: revoke what it held, then apply the policy (synchronously)."""
        for token in instance.spec.start.tokens:
            self._authority.revoke(token)
        handle.last_exit = ending.reason
        if not ending.requested and handle.instance is instance:
            _log.warning("feature exited", feature=handle.name, reason=ending.reason)
            if not self._updates.crashed(handle, instance, ending):  # on probation: rolls back
                self._recovery.after_exit(handle, ending)

    async def _stop(self, handle: FeatureHandle, *, keep_wanted: bool = False) -> None:
        instance = handle.instance
        if instance is not None and not instance.ended.is_set():
            handle._set(FeatureState.STOPPING)
            await instance.stop(self.stop_timeout)
        if not keep_wanted:
            handle.wanted = False
        handle._set(FeatureState.STOPPED)

    async def _close(self) -> None:
        self._closing = True
        with anyio.CancelScope(shield=True):
            try:
                await self._variants.aclose()  # the candidates stop; the controls serve on
                await self._updates.aclose()  # no update left half done, no extra container
                async with self._lock:
                    for name in reversed(self._order):
                        await self._stop(self._handles[name])
                await self._machinery.aclose()
                self._audit.close()
            finally:
                self._tg.cancel()  # the services the shutdown needed are done with
