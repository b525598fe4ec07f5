"""Plugins: feature bundles installed into a running app and removed from it, and started
again with the app until they are removed.

A plugin is granted what its capsule.toml asks for within the app's ``[plugins]`` policy,
exactly as an app feature is within its ``[policy.NAME]``; past that, it is a feature like
the others (tokens, view, cgroup, restarts, calls in and out through the broker). This
module decides the order of installing and removing and keeps ``plugins.json``; it must
not launch, stop or mint itself (the supervisor's launch and stop do), nor widen a grant.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NoReturn, final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._broker._variants import VariantRoutes
from capsule._manifest import App, Candidate, read_candidate
from capsule._manifest._env import grant_environment
from capsule._manifest._model import DEFAULT_BROKER_LIMITS
from capsule._supervisor._announce import Announcer
from capsule._supervisor._handle import FeatureHandle
from capsule._supervisor._history import History, VersionEvent
from capsule._supervisor._instance import Instance
from capsule._supervisor._plan import Planner
from capsule._supervisor._pluginstore import PluginRecord, PluginStore
from capsule._supervisor._records import PluginInfo
from capsule._supervisor._restart import RestartTracker
from capsule._supervisor._versions import note_start
from capsule.errors import (
    ApprovalRequiredError,
    CapsuleError,
    ConfigError,
    FeatureError,
    FeatureStartError,
    FeatureUnavailableError,
)

__all__ = ["PluginInfo", "Plugins", "Removed"]

_log = structlog.get_logger("capsule.supervisor")

REMEMBERED: Final = 256
"""Removed plugins whose calls still say when they were removed (older ones: no such feature)."""
_DRAIN_POLL: Final = 0.01
_RELEASE_WAIT: Final = 30.0
"""Seconds a removed plugin's view and cgroup may take to go once its container ended."""
"""Seconds between two looks at the calls a plugin being removed still serves."""


@final
class Removed:
    """A plugin that was removed, as the broker sees its name: each call fails at once with
    FeatureUnavailableError saying when (a ``Target`` of ``capsule._broker._calls``)."""

    _variants: VariantRoutes | None = None  # a removed plugin runs no variants

    def __init__(self, name: str, version: str, at: float) -> None:
        self.name = name
        self.version = version
        self.at = at

    @property
    def why(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds")
        return f"was removed at {when} (plugin version {self.version} uninstalled)"

    def _live_peer(self) -> None:
        return None

    def _check_available(self, caller: str = "") -> NoReturn:
        raise FeatureUnavailableError(self.name, self.why)

    async def _wait_peer(self) -> NoReturn:
        self._check_available()


Launch = Callable[[FeatureHandle], Awaitable[None]]
Stop = Callable[[FeatureHandle], Awaitable[None]]


@final
class Plugins:
    """The plugins of one app run: installing, removing, and starting the recorded ones."""

    def __init__(
        self,
        app: App,
        state_dir: Path,
        *,
        plan: Planner,
        broker: Broker,
        audit: AuditLog,
        announcer: Announcer,
        history: History,
        handles: MutableMapping[str, FeatureHandle],
        order: list[str],
        lock: anyio.Lock,
        launch: Launch,
        stop: Stop,
    ) -> None:
        self._app = app
        self._state_dir = state_dir
        self._plan = plan
        self._broker = broker
        self._audit = audit
        self._announcer = announcer
        self._history = history
        self._handles = handles  # the supervisor's own: a plugin is one of its features
        self._order = order
        self._lock = lock
        self._launch = launch
        self._stop = stop
        self._store = PluginStore(state_dir)
        self._records: dict[str, PluginRecord] = {}
        self._problems: dict[str, str] = {}  # recorded, but not started: why
        self._removed: OrderedDict[str, Removed] = OrderedDict()
        self._busy: set[str] = set()  # being installed or removed
        #: containers started for each name in this run: a plugin installed again goes on
        #: counting, so its cgroup and view are never named like a removed one's
        self._generations: dict[str, int] = {}

    # -- what others ask -----------------------------------------------------------------

    def removed(self, name: str) -> Removed | None:
        """The tombstone of a plugin removed in this run, while it is not installed again."""
        return self._removed.get(name)

    def installed(self) -> tuple[PluginInfo, ...]:
        """Every recorded plugin, in the order they were installed."""
        found = []
        for record in self._records.values():
            handle = self._handles.get(record.name)
            problem = self._problems.get(record.name)
            found.append(
                PluginInfo(
                    name=record.name,
                    version=record.version,
                    bundle=record.bundle,
                    installed=record.installed,
                    capabilities=record.capabilities,
                    state="not started" if handle is None else handle.state.value,
                    problem=problem,
                )
            )
        return tuple(found)

    async def review(self, bundle: Path) -> Candidate:
        """Read ``bundle`` as a plugin of this app: what it would be granted, and the diff
        (ConfigError for a bad bundle, UpdateRefusedError for a request the policy refuses)."""
        candidate = await anyio.to_thread.run_sync(self._read, bundle)
        name = candidate.manifest.name
        record = self._records.get(name)
        if record is not None or name in self._busy:
            where = "" if record is None else f" (version {record.version} from {record.bundle})"
            raise FeatureError(name, f"is already installed as a plugin{where}: remove it first")
        return candidate

    def _read(self, bundle: Path) -> Candidate:
        return read_candidate(self._app, Path(os.path.abspath(bundle)), plugin=True)

    # -- installing ----------------------------------------------------------------------

    async def install(self, bundle: Path, *, approve: bool) -> FeatureHandle:
        """Read, check, start and record the plugin in ``bundle`` (see Supervisor.install)."""
        try:
            candidate = await self.review(bundle)
            diff = candidate.diff
            if diff.widens and not approve:
                raise ApprovalRequiredError(candidate.manifest.name, diff.render())
        except CapsuleError as exc:
            self._refused(str(bundle), exc)
            raise
        # from here it runs to the end, within the start timeout: a plugin is installed and
        # recorded, or nothing of it is left; never half of it
        with anyio.CancelScope(shield=True):
            handle = await self._install(candidate)
        return handle  # noqa: RET504 - after the scope: mypy holds that a CancelScope may swallow

    async def _install(self, candidate: Candidate) -> FeatureHandle:
        name, diff = candidate.manifest.name, candidate.diff
        self._busy.add(name)
        try:
            handle = await self._start(candidate)
            record = PluginRecord(
                name=name,
                version=candidate.manifest.version,
                bundle=str(candidate.manifest.root),
                installed=time.time(),
                capabilities=tuple(str(cap) for cap in candidate.grant.capabilities),
                approved=diff.widens,
            )
            records = {**self._records, name: record}
            try:
                await anyio.to_thread.run_sync(self._store.save, records)
            except OSError as exc:
                await self._take_down(handle, drain=0.0)
                self._forget(name)
                raise FeatureStartError(
                    name, f"started, but could not be recorded in {self._store.path}: {exc}"
                ) from None
            self._records = records
            self._problems.pop(name, None)
            self._removed.pop(name, None)
        finally:
            self._busy.discard(name)
        self._announcer.up(handle, "installed")
        await self._note(name, record.version, record.bundle, "installed")
        self._audit.record(
            "plugin-add",
            feature=name,
            decision="install",
            version=record.version,
            bundle=record.bundle,
            capabilities=list(record.capabilities),
            approved=record.approved,
        )
        _log.info("plugin installed", feature=name, version=record.version, bundle=record.bundle)
        return handle

    async def restore(self) -> None:
        """Start every recorded plugin again (after the app's own features), each checked
        against the current ``[plugins]`` policy; one that no longer passes is not started,
        and says why (log, audit, ``installed()``), and the app goes on."""
        try:
            self._records = await anyio.to_thread.run_sync(self._store.load)
        except (ConfigError, OSError) as exc:  # corrupt (moved aside), or unreadable
            _log.error("installed plugins not started", error=str(exc))
            self._audit.record("plugin-add", feature="@plugins", decision="refuse", reason=str(exc))
            return
        for record in list(self._records.values()):
            try:
                candidate = await anyio.to_thread.run_sync(self._read, Path(record.bundle))
                self._check_record(record, candidate)
                handle = await self._start(candidate)
            except (CapsuleError, OSError) as exc:
                self._problems[record.name] = str(exc)
                _log.error("plugin not started", feature=record.name, error=str(exc))
                self._audit.record(
                    "plugin-add",
                    feature=record.name,
                    decision="refuse",
                    reason=f"not started with the app: {exc}",
                    bundle=record.bundle,
                )
                continue
            await anyio.to_thread.run_sync(note_start, self._history, candidate.manifest)
            if candidate.manifest.version != record.version:
                _log.warning(
                    "plugin version changed",
                    feature=record.name,
                    recorded=record.version,
                    running=candidate.manifest.version,
                )
            self._announcer.up(handle, "started")

    @staticmethod
    def _check_record(record: PluginRecord, candidate: Candidate) -> None:
        """Refuse a recorded plugin whose bundle now asks for more than was granted when it
        was installed (its approval covered only that)."""
        if candidate.manifest.name != record.name:
            raise FeatureStartError(
                record.name,
                f"its bundle {record.bundle} now declares feature {candidate.manifest.name!r}",
            )
        granted = set(record.capabilities)
        more = [str(c) for c in candidate.grant.capabilities if str(c) not in granted]
        if more:
            raise FeatureStartError(
                record.name,
                "its bundle now asks for more than was granted when it was installed ("
                + ", ".join(more)
                + "): remove it and add it again to approve that",
            )

    async def _start(self, candidate: Candidate) -> FeatureHandle:
        """Start ``candidate`` as a feature of the app and wait until it is ready; on any
        failure, leave nothing of it behind and raise."""
        manifest, grant = candidate.manifest, candidate.grant
        name = manifest.name
        if name in self._handles:
            raise FeatureError(name, "is already a feature of this app")
        policy = self._app.manifest.plugins
        environment = grant_environment(self._app, name, grant, os.environ, table=("plugins",))
        fresh = [path for path in self._storage(name) if not path.exists()]
        self._plan.add(name, grant, environment)
        self._broker.set_limits(name, DEFAULT_BROKER_LIMITS if policy is None else policy.limits)
        handle: FeatureHandle = FeatureHandle._create(manifest, len(self._order), grant=grant)
        handle.generation = self._generations.get(name, 0)
        self._handles[name] = handle
        self._order.append(name)
        self._announcer.watch(handle, quiet=True)
        started = False
        try:
            async with self._lock:
                handle.restarts = RestartTracker(manifest.restart)
                handle.wanted = False  # a start that fails is not retried: nothing to restart
                await self._launch(handle)
                started = handle.running
                handle.wanted = started
            if not started:
                raise handle.last_error or FeatureStartError(
                    name, f"ended as soon as it was ready ({handle.last_exit})"
                )
        finally:
            if not started:
                with anyio.CancelScope(shield=True):
                    self._forget(name)
                    await anyio.to_thread.run_sync(_remove_all, fresh)
        return handle

    def _refused(self, bundle: str, exc: CapsuleError) -> None:
        feature = getattr(exc, "feature", None) or "@plugins"
        self._audit.record(
            "plugin-add", feature=feature, decision="refuse", reason=str(exc), bundle=bundle
        )

    # -- removing ------------------------------------------------------------------------

    async def uninstall(self, name: str, *, drain: float, purge: bool) -> None:
        """Remove an installed plugin (see Supervisor.uninstall)."""
        if name in self._app.features:
            raise FeatureError(
                name,
                "is a feature of app.toml, not a plugin: it is not uninstalled at run time "
                "(stop it, or remove it from app.toml)",
            )
        record = self._records.get(name)
        if record is None or name in self._busy:
            gone = self._removed.get(name)
            if gone is not None:
                raise FeatureUnavailableError(name, gone.why)
            if name in self._busy:
                raise FeatureError(name, "is being installed or removed already")
            listed = ", ".join(self._records) or "none"
            raise FeatureError(name, f"is not an installed plugin (installed: {listed})")
        with anyio.CancelScope(shield=True):  # within drain and the stop timeout: never half
            await self._uninstall(record, drain=drain, purge=purge)

    async def _uninstall(self, record: PluginRecord, *, drain: float, purge: bool) -> None:
        name = record.name
        self._busy.add(name)
        try:
            self._removed[name] = Removed(name, record.version, time.time())
            self._removed.move_to_end(name)
            while len(self._removed) > REMEMBERED:
                self._removed.popitem(last=False)
            handle = self._handles.get(name)
            if handle is not None:
                await self._take_down(handle, drain=drain)
            self._forget(name)
            if purge:
                await anyio.to_thread.run_sync(_remove_all, self._storage(name))
            records = {n: r for n, r in self._records.items() if n != name}
            await anyio.to_thread.run_sync(self._store.save, records)
            self._records = records
            self._problems.pop(name, None)
        finally:
            self._busy.discard(name)
        await self._note(name, record.version, record.bundle, "removed")
        self._audit.record(
            "plugin-remove",
            feature=name,
            decision="remove",
            version=record.version,
            bundle=record.bundle,
            purged=purge,
        )
        _log.info("plugin removed", feature=name, version=record.version, purged=purge)

    async def _take_down(self, handle: FeatureHandle, *, drain: float) -> None:
        """Refuse new calls at once, let the ones in flight finish within ``drain`` seconds,
        stop the container and revoke every token it held or delegated."""
        name = handle.name
        self._handles.pop(name, None)  # from here the broker finds the tombstone (or nothing)
        if name in self._order:
            self._order.remove(name)
        for index, other in enumerate(self._order):
            self._handles[other].index = index
        handle.wanted = False  # a crash now is not restarted
        self._generations[name] = handle.generation  # a restart adds none from here
        self._announcer.down(handle, "removed")
        instance = handle.instance
        if instance is not None and not instance.ended.is_set():
            await self._drain(instance, drain)
        async with self._lock:  # its tokens are revoked as its container ends: those it
            await self._stop(handle)  # was given, admitted, renewed and delegated
        # a restart that was under way during the drain may have started another container
        for ended in {id(i): i for i in (instance, handle.instance) if i is not None}.values():
            with anyio.move_on_after(_RELEASE_WAIT):
                await ended.released.wait()
            if not ended.released.is_set():  # never expected: say so, do not hang
                _log.error("plugin's view or cgroup not removed", feature=name, pid=ended.pid)

    async def _drain(self, instance: Instance, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            # the router has no event for a container whose calls are all answered: poll
            while instance.in_flight and not instance.ended.is_set():  # noqa: ASYNC110
                await anyio.sleep(_DRAIN_POLL)
        if instance.in_flight and not instance.ended.is_set():
            error = FeatureUnavailableError(
                instance.feature, f"was removed before the call finished ({seconds:g}s drain)"
            )
            self._broker.calls.fail_served(instance.peer, error)

    async def _note(self, name: str, version: str, bundle: str, event: VersionEvent) -> None:
        """Add ``event`` to the version history (``sup.versions(name)``); a history that
        cannot be written is logged, not raised (the plugin's own record is plugins.json)."""
        try:
            await anyio.to_thread.run_sync(self._history.record, name, version, bundle, event)
        except (OSError, ConfigError) as exc:
            _log.error(
                "cannot record a plugin in the version history",
                feature=name,
                event=event,
                history=str(self._history.path),
                error=str(exc),
            )

    def _forget(self, name: str) -> None:
        """Drop what installing ``name`` added beside its container."""
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.on_state = None
            self._generations[name] = handle.generation
        if name in self._order:
            self._order.remove(name)
            for index, other in enumerate(self._order):
                self._handles[other].index = index
        self._plan.remove(name)
        self._broker.set_limits(name, None)

    def _storage(self, name: str) -> tuple[Path, ...]:
        """The plugin's private storage and copy-on-write changes."""
        return (self._state_dir / "private" / name, self._state_dir / "cow" / name)


def _remove_all(paths: list[Path] | tuple[Path, ...]) -> None:
    """Remove each directory and everything beneath it (never following a link out)."""
    for path in paths:
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
