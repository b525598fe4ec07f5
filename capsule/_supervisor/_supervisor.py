"""The supervisor: starts an app's features in sandboxed containers and keeps the app running.

Lifecycle and restart strategies (one_for_one, one_for_all, rest_for_one) with
restart intensity, backoff and quarantine; calls from the host program to features.
Written on anyio (trio by default, asyncio works too). It never unpickles or
evaluates anything a container sends, and never holds a lock across a call.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, final

import anyio
import anyio.abc
import anyio.lowlevel
import cloudpickle
import structlog

from capsule._broker._audit import AuditLog, default_audit_path
from capsule._broker._broker import Broker
from capsule._broker._host import Stream, Subscription
from capsule._broker._routes import Peer
from capsule._container._feature import Feature
from capsule._ipc._messages import Entry, Inline, Start
from capsule._manifest import App, FeatureManifest, MountGrant, load_app
from capsule._manifest._env import feature_environments
from capsule._sandbox import _isolation
from capsule._sandbox._cgroups import CgroupTree, ContainerCgroup
from capsule._sandbox._view import Bind, ViewPlan
from capsule._spawn._client import ZygoteClient
from capsule._spawn._protocol import Rlimits, SpawnRequest
from capsule._supervisor._handshake import Expectation
from capsule._supervisor._instance import Ending, Instance, LaunchSpec
from capsule._supervisor._restart import RestartTracker
from capsule._supervisor._rundir import RunDir
from capsule._supervisor._views import ViewServer, ViewTimeouts
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule._tokens._format import MAX_CAPABILITIES
from capsule._tokens._keys import KeyRing
from capsule.errors import (
    CapsuleError,
    ConfigError,
    FeatureError,
    FeatureStartError,
    FeatureUnavailableError,
)
from fusefs import MountKind, MountSpec, ViewSpec

__all__ = [
    "FeatureHandle",
    "FeatureState",
    "FeatureStatistics",
    "HeldToken",
    "Supervisor",
    "SupervisorStatistics",
    "open_supervisor",
]

_log = structlog.get_logger("capsule.supervisor")

_UID_BASE: Final = 2_000_000_000
_TOKEN_TTL: Final = 24 * 3600.0
_MiB: Final = 1 << 20


class FeatureState(enum.Enum):
    """Where a feature is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESTARTING = "restarting"
    QUARANTINED = "quarantined"


@final
@dataclass(frozen=True, slots=True)
class FeatureStatistics:
    """A snapshot of one feature; memory and cpu figures come from its cgroup (None without)."""

    name: str
    version: str
    state: str
    pid: int | None
    restarts: int
    calls_total: int
    calls_in_flight: int
    messages: int
    denied: int
    events_dropped: int
    uptime: float | None
    last_exit: str | None
    memory_current: int | None
    memory_limit: int | None
    oom_kills: int
    pids_current: int | None
    cpu_usage_ns: int | None
    files_allowed: int = 0  # file operations its view's server allowed (reported each second)
    files_denied: int = 0  # and refused
    connections: int = 0  # sockets the broker opened for it (ctx.connect and ctx.listen)


@final
@dataclass(frozen=True, slots=True)
class HeldToken:
    """A token a running container holds: its id, text, capabilities and expiry (Unix time)."""

    token_id: str
    text: str
    capabilities: tuple[str, ...]
    expires: float


@final
@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of the whole app."""

    app: str
    isolation: str
    cgroups: str
    features: Mapping[str, FeatureStatistics]
    containers_started: int
    restarts: int
    quarantined: tuple[str, ...]
    calls_routed: int
    events_published: int
    allowed: int
    denied: int
    audit_path: str | None


class _NoPublicConstructor(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


@final
class FeatureHandle(metaclass=_NoPublicConstructor):
    """One feature of a running app, as the supervisor tracks it. Returned by ``sup.features()``."""

    def __init__(self, manifest: FeatureManifest, index: int) -> None:
        self.name = manifest.name
        self.manifest = manifest
        self.index = index
        self.state = FeatureState.STOPPED
        self.instance: Instance | None = None
        self.restarts = RestartTracker(manifest.restart)
        self.last_exit: str | None = None
        self.last_error: CapsuleError | None = None
        self.wanted = False  # whether the supervisor should keep it running
        self.generation = 0
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return f"<FeatureHandle {self.name} {self.state.value}>"

    def _set(self, state: FeatureState) -> None:
        self.state = state
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - trio's own wait_* style takes a cancel scope; this one is the documented shape
        """Wait until the feature is running; FeatureUnavailableError if it is stopped or failed."""
        with anyio.fail_after(timeout):
            await self._running_instance()

    @property
    def running(self) -> bool:
        return self.state is FeatureState.RUNNING

    async def _running_instance(self) -> Instance:
        """The live container once the feature runs (not one that just ended)."""
        while True:
            while self.state is not FeatureState.RUNNING:
                self._check_available()
                await self._changed.wait()
            instance = self.instance
            if instance is not None and instance.ready is not None and not instance.ended.is_set():
                return instance
            await self._changed.wait()  # it just ended: the supervisor is about to act

    # what the broker asks of a feature (capsule._broker._broker.Target)

    def _live_peer(self) -> Peer | None:
        instance = self.instance
        if (
            self.state is FeatureState.RUNNING
            and instance is not None
            and instance.ready is not None
            and not instance.ended.is_set()
        ):
            return instance.peer
        return None

    async def _wait_peer(self) -> Peer:
        return (await self._running_instance()).peer

    def tokens(self) -> tuple[HeldToken, ...]:
        """The tokens the running container holds (admitted by the broker), delegated ones too."""
        instance = self.instance
        if instance is None or instance.ended.is_set():
            return ()
        return tuple(
            HeldToken(
                h.claims.token_id, h.token, tuple(str(c) for c in h.claims.caps), h.claims.exp
            )
            for h in instance.peer.handles.values()
            if h.grant.alive
        )

    def _check_available(self) -> None:
        if self.state is FeatureState.QUARANTINED:
            raise FeatureUnavailableError(
                self.name, f"is quarantined after too many restarts (last: {self.last_exit})"
            )
        if self.state is FeatureState.STOPPED and not self.wanted:
            raise FeatureUnavailableError(self.name, "is stopped")

    def statistics(self) -> FeatureStatistics:
        instance = self.instance
        stats = None if instance is None else instance.statistics()
        view = None if instance is None else instance.view
        running = instance is not None and not instance.ended.is_set()
        return FeatureStatistics(
            name=self.name,
            version=self.manifest.version,
            state=self.state.value,
            pid=instance.pid if running and instance is not None else None,
            restarts=self.restarts.total,
            calls_total=0 if instance is None else instance.calls_total,
            calls_in_flight=0 if instance is None else instance.in_flight,
            messages=0 if instance is None else instance.peer.messages,
            denied=0 if instance is None else instance.peer.denied,
            events_dropped=0 if instance is None else instance.peer.conn.dropped,
            uptime=anyio.current_time() - instance.started_at if running and instance else None,
            last_exit=self.last_exit,
            memory_current=None if stats is None else stats.memory_current,
            memory_limit=None if stats is None else stats.memory_limit,
            oom_kills=0 if stats is None else stats.oom_kills,
            pids_current=None if stats is None else stats.pids_current,
            cpu_usage_ns=None if stats is None else stats.cpu_usage_ns,
            files_allowed=0 if view is None else view.allowed,
            files_denied=0 if view is None else view.denied,
            connections=0 if instance is None else instance.peer.connections,
        )


@final
class Supervisor(metaclass=_NoPublicConstructor):
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
        state_dir: Path | None,
        view_timeouts: ViewTimeouts,
        environments: Mapping[str, tuple[tuple[str, str], ...]],
    ) -> None:
        self.app = app
        self._environments = environments  # each container's whole environment
        self.state_dir = state_dir or default_state_dir(app.manifest.name)
        self.view_timeouts = view_timeouts
        # every background task of the app, shielded: a cancelled block around
        # open_supervisor must not end them before _close has stopped the containers
        self._tg = Services(task_group)
        self._inline = dict(inline)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.call_timeout = call_timeout
        self._handles: dict[str, FeatureHandle] = {
            name: FeatureHandle._create(app.features[name], index)
            for index, name in enumerate(app.start_order)
        }
        self._order = list(app.start_order)
        self._authority = TokenAuthority(KeyRing.generate())
        self._rundir = RunDir()
        self._audit = AuditLog(
            audit or default_audit_path(app.manifest.name, self._rundir.name),
            app=app.manifest.name,
            run=self._rundir.name,
        )
        self._broker = Broker(
            self._authority,
            self._audit,
            self._handles.get,
            self._tg,
            call_timeout=call_timeout,
        )
        self._zygote: ZygoteClient | None = None
        self._cgroups: CgroupTree | None = None
        self._isolation: _isolation.Isolation | None = None
        self._lock = anyio.Lock()
        self._slots = 0
        self._started = 0
        self._closing = False

    # -- public API -------------------------------------------------------------------

    def features(self) -> dict[str, FeatureHandle]:
        """Every feature of the app, in start order."""
        return dict(self._handles)

    def feature(self, name: str) -> FeatureHandle:
        try:
            return self._handles[name]
        except KeyError:
            known = ", ".join(self._order)
            raise FeatureError(
                name, f"is not part of app {self.app.manifest.name!r} ({known})"
            ) from None

    async def start(self, name: str) -> None:
        """Start a stopped feature and wait until it is ready (FeatureStartError otherwise)."""
        handle = self.feature(name)
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
        async with self._lock:
            handle.wanted = False
            await self._stop(handle)

    async def restart(self, name: str) -> None:
        """Stop and start a feature again (not counted against its restart limit)."""
        handle = self.feature(name)
        async with self._lock:
            handle.wanted = True
            await self._stop(handle, keep_wanted=True)
            handle.restarts = RestartTracker(handle.manifest.restart)
            await self._launch(handle)
        if not handle.running:
            raise handle.last_error or FeatureStartError(name, "did not start")

    async def call(
        self,
        feature: str,
        service: str,
        payload: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a call's deadline travels with it
    ) -> Any:
        """Call ``service`` of ``feature`` with host authority; returns its reply.

        Waits (within the deadline) for a feature that is starting or restarting;
        fails at once with FeatureUnavailableError if it is stopped or quarantined,
        with FeatureCrashedError if it dies during the call, with RemoteError if the
        handler raised, with FeatureTimeoutError past ``timeout`` seconds (the
        handler is then cancelled).
        """
        self.feature(feature)
        limit = self.call_timeout if timeout is None else timeout
        return await self._broker.host_call(feature, service, payload, limit)

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

    def revoke(self, token_id: str) -> frozenset[str]:
        """Revoke a token (by its id) and everything derived from it; takes effect before
        the next message (file access through the views those tokens grant fails from the
        next operation the file-system server sees). Returns the ids revoked."""
        revoked = self._broker.revoke(token_id)
        for handle in self._handles.values():
            instance = handle.instance
            if instance is not None and instance.view is not None and not instance.ended.is_set():
                instance.view.revoke(revoked)
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
    def audit_path(self) -> Path | None:
        """The JSON-lines file this run's audit events go to."""
        return self._audit.path

    def statistics(self) -> SupervisorStatistics:
        isolation = self._isolation
        audit = self._audit.statistics()
        return SupervisorStatistics(
            app=self.app.manifest.name,
            isolation="unknown" if isolation is None else isolation.level,
            cgroups="none" if self._cgroups is None else self._cgroups.support.describe(),
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
        )

    # -- starting containers ----------------------------------------------------------

    async def _open(self) -> None:
        isolation = _isolation.probe()
        self._isolation = isolation
        _isolation.require(isolation, self.app.manifest.allow_missing, app=self.app.manifest.name)
        removed = self._rundir.open()
        if removed:
            _log.warning("removed stale run directories", paths=[str(p) for p in removed])
        if isolation.get("cgroups").available:
            from capsule._sandbox._cgroups import cleanup_stale  # noqa: PLC0415 - rarely needed

            stale = await anyio.to_thread.run_sync(cleanup_stale, isolation.cgroups)
            if stale:
                _log.warning("removed stale cgroups", paths=stale)
            tree = CgroupTree(isolation.cgroups, self._rundir.name)
            await anyio.to_thread.run_sync(tree.open)
            self._cgroups = tree
        self._tg.start_soon(self._broker.deadlines.run)
        self._tg.start_soon(self._broker.outbox.run)
        self._tg.start_soon(self._audit.run)
        self._zygote = ZygoteClient.launch(self._rundir.stage)
        await self._zygote.wait_started()
        self._tg.start_soon(self._zygote.serve)
        _log.info(
            "supervisor started",
            app=self.app.manifest.name,
            isolation=isolation.level,
            missing=list(isolation.missing),
        )
        async with self._lock:
            for name in self._order:
                handle = self._handles[name]
                handle.wanted = True
                await self._launch(handle)

    def _uid(self) -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        self._slots += 1
        uids = container_uids(os.getpid())
        uid = uids[self._slots % len(uids)]
        return uid, uid

    def _tokens(self, handle: FeatureHandle) -> list[Token]:
        """Fresh tokens for a new container of ``handle``: its grant, a few capabilities each."""
        caps = list(self.app.grants[handle.name].capabilities)
        return [
            self._authority.mint(handle.name, caps[i : i + MAX_CAPABILITIES], ttl=_TOKEN_TTL)
            for i in range(0, len(caps), MAX_CAPABILITIES)
        ]

    def _view(self, handle: FeatureHandle, tokens: list[Token], uid: int, gid: int) -> ViewSpec:
        """The file-system view of a new container: one mount per granted fs capability,
        each tied to the token that carries it (revocation and expiry close that mount)."""
        carriers = {  # view path -> the fs capability granting it, and the token carrying it
            cap.target.rstrip("/"): (str(cap), token)
            for token in tokens
            for cap in token.claims.caps
            if cap.kind == "fs"
        }
        mounts = []
        for grant in self.app.grants[handle.name].mounts:
            text, token = carriers[grant.view]
            kind, backing, upper = self._backing(handle.name, grant)
            mounts.append(
                MountSpec(
                    view_path=grant.view,
                    kind=kind,
                    backing=backing,
                    upper=upper,
                    quota_bytes=grant.quota,
                    quota_inodes=grant.inodes,
                    token=token.token_id,
                    capability=text,
                    expires=token.claims.exp,
                )
            )
        manifest = handle.manifest
        expires = min((t.claims.exp for t in tokens), default=None)
        info = {
            "feature": f"{handle.name}\n",
            "version": f"{manifest.version}\n",
            "capabilities": "".join(f"{cap}\n" for t in tokens for cap in t.claims.caps),
            "tokens": "".join(f"{t.token_id} {t.claims.exp:.0f}\n" for t in tokens),
            "expires": "never\n" if expires is None else f"{_iso(expires)}\n",
        }
        return ViewSpec(
            owner=handle.name, mounts=tuple(mounts), uid=uid, gid=gid, info=info
        ).validate()

    def _backing(self, feature: str, grant: MountGrant) -> tuple[MountKind, str, str | None]:
        """How a granted mount is backed: kind, backing directory and (cow) upper directory."""
        inside = grant.view.strip("/")
        if grant.storage == "private":
            return MountKind.PRIVATE, str(self.state_dir / "private" / feature / inside), None
        assert grant.host is not None  # noqa: S101 - only private storage has no host directory
        if grant.storage == "cow":
            upper = str(self.state_dir / "cow" / feature / inside)
            return MountKind.COW, str(grant.host), upper
        return (MountKind.RW if grant.mode == "rw" else MountKind.RO), str(grant.host), None

    def _spec(
        self,
        handle: FeatureHandle,
        uid: int,
        gid: int,
        cgroup: ContainerCgroup | None,
        *,
        tokens: list[Token],
        view: ViewServer,
    ) -> LaunchSpec:
        manifest = handle.manifest
        grant = self.app.grants[handle.name]
        limits = manifest.limits
        isolation = self._isolation
        assert isolation is not None  # noqa: S101 - set by _open
        served = str(view.mountpoint)
        binds = [Bind(str(manifest.root), "/bundle"), Bind(f"{served}/capsule", "/capsule")]
        binds += [Bind(f"{served}{m.view}", m.view, writable=True) for m in grant.mounts]
        quota = max((m.quota or 0 for m in grant.mounts), default=0)
        request = SpawnRequest(
            name=handle.name,
            uid=uid,
            gid=gid,
            view=ViewPlan(binds=tuple(binds), tmp_size=limits.tmp),
            env=self._environments[handle.name],
            rlimits=Rlimits(
                nofile=limits.open_files,
                fsize=max(limits.tmp, quota, 64 * _MiB),
                data=2 * limits.memory + 256 * _MiB,
                nproc=limits.pids if os.geteuid() == 0 else None,
            ),
            cgroup_procs=() if cgroup is None else cgroup.procs_files,
            landlock=isolation.get("landlock").available,
            seccomp=isolation.get("seccomp").available,
        )
        inline = self._inline.get(handle.name)
        code = (
            Inline(pickled=_pickle_feature(inline))
            if inline is not None
            else Entry(module=manifest.entry_module, attribute=manifest.entry_attribute)
        )
        start = Start(
            feature=handle.name,
            version=manifest.version,
            tokens=[token.text for token in tokens],
            code=code,
            bundle="/bundle",
        )
        expectation = Expectation(
            host_uid=uid,
            seccomp=request.seccomp,
            landlock_abi=isolation.landlock_abi if request.landlock else 0,
        )
        return LaunchSpec(
            handle.name, manifest.version, request, expectation, start, self.start_timeout
        )

    async def _open_view(
        self,
        handle: FeatureHandle,
        tokens: list[Token],
        uid: int,
        gid: int,
        cgroup: ContainerCgroup | None,
    ) -> ViewServer:
        """Start the file-system server of a new container and wait until its view is
        mounted. The server shares the container's cpu limit (cgroup v1): what a feature
        makes its server do is charged to that feature."""
        assert self._zygote is not None  # noqa: S101 - set by _open
        assert self._isolation is not None  # noqa: S101 - set by _open
        return await ViewServer.launch(
            handle.name,
            self._view(handle, tokens, uid, gid),
            self._rundir.views / f"{handle.name}-{handle.generation}",
            zygote=self._zygote,
            audit=self._audit,
            landlock=self._isolation.get("landlock").available,
            timeouts=self.view_timeouts,
            cgroup_procs=() if cgroup is None else cgroup.cpu_procs_files,
        )

    async def _launch(self, handle: FeatureHandle) -> None:
        """Start one container for ``handle`` (lock held); on failure, hand it to restart logic."""
        assert self._zygote is not None  # noqa: S101 - set by _open
        handle._set(FeatureState.STARTING)
        handle.generation += 1
        uid, gid = self._uid()
        cgroup = None
        view = None
        try:
            tokens = self._tokens(handle)
            if self._cgroups is not None:
                limits = handle.manifest.limits
                cgroup = await anyio.to_thread.run_sync(
                    lambda: self._cgroups.create(  # type: ignore[union-attr]
                        f"{handle.name}-{handle.generation}",
                        memory=limits.memory,
                        pids=limits.pids,
                        cpu=limits.cpu,
                    )
                )
            view = await self._open_view(handle, tokens, uid, gid, cgroup)
            spec = self._spec(handle, uid, gid, cgroup, tokens=tokens, view=view)
            instance = await Instance.launch(
                spec, self._zygote, cgroup, broker=self._broker, task_group=self._tg, view=view
            )
        except (CapsuleError, OSError) as exc:
            with anyio.CancelScope(shield=True):
                if view is not None:  # an instance stops its own view, twice is harmless
                    await view.stop()
                if cgroup is not None:  # an instance that was served removes its own
                    await anyio.to_thread.run_sync(cgroup.remove)
            error = (
                exc if isinstance(exc, FeatureError) else FeatureStartError(handle.name, str(exc))
            )
            handle.last_error = error
            handle.last_exit = f"failed to start: {exc}"
            _log.error("feature failed to start", feature=handle.name, error=str(exc))
            self._after_exit(handle, Ending(None, None, requested=False, reason=str(exc)))
            return
        self._started += 1
        handle.instance = instance
        handle.last_error = None
        handle._set(FeatureState.RUNNING)
        _log.info("feature running", feature=handle.name, pid=instance.pid)
        instance.on_end = functools.partial(self._ended, handle, instance)
        if instance.ended.is_set():  # it ended between ready and here
            self._ended(handle, instance, instance.ending)  # type: ignore[arg-type]

    def _ended(self, handle: FeatureHandle, instance: Instance, ending: Ending) -> None:
        """A container ended: revoke what it held, then apply the policy (synchronously)."""
        for token in instance.spec.start.tokens:
            self._authority.revoke(token)
        handle.last_exit = ending.reason
        if not ending.requested and handle.instance is instance:
            _log.warning("feature exited", feature=handle.name, reason=ending.reason)
            self._after_exit(handle, ending)

    def _after_exit(self, handle: FeatureHandle, ending: Ending) -> None:
        """Apply the restart policy and the app's strategy to an unrequested exit."""
        if self._closing or not handle.wanted:
            handle._set(FeatureState.STOPPED)
            return
        if not handle.restarts.wants_restart(clean_exit=ending.clean):
            handle.wanted = False
            handle._set(FeatureState.STOPPED)
            return
        delay = handle.restarts.next_delay(anyio.current_time())
        if delay is None:
            policy = handle.manifest.restart
            handle.wanted = False
            handle._set(FeatureState.QUARANTINED)
            _log.error(
                "feature quarantined",
                feature=handle.name,
                restarts=policy.max_restarts,
                window=policy.window,
                last=ending.reason,
            )
            return
        handle._set(FeatureState.RESTARTING)
        self._tg.start_soon(self._restart_after, handle, delay)

    def _affected(self, handle: FeatureHandle) -> list[FeatureHandle]:
        strategy = self.app.manifest.strategy
        if strategy == "one_for_all":
            names = self._order
        elif strategy == "rest_for_one":
            names = self._order[handle.index :]
        else:
            names = [handle.name]
        return [self._handles[n] for n in names if n == handle.name or self._handles[n].wanted]

    async def _restart_after(self, handle: FeatureHandle, delay: float) -> None:
        _log.info("feature restarting", feature=handle.name, delay=round(delay, 3))
        await anyio.sleep(delay)
        async with self._lock:
            if self._closing or handle.state is not FeatureState.RESTARTING:
                return
            group = self._affected(handle)
            for other in reversed(group):
                if other is not handle:
                    await self._stop(other, keep_wanted=True)
                    other._set(FeatureState.RESTARTING)
            for member in group:
                if member.wanted and member.state is not FeatureState.RUNNING:
                    await self._launch(member)

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
                async with self._lock:
                    for name in reversed(self._order):
                        await self._stop(self._handles[name])
                if self._zygote is not None:
                    await self._zygote.aclose()
                if self._cgroups is not None:
                    await anyio.to_thread.run_sync(self._cgroups.close)
                self._rundir.close()
                self._audit.close()
            finally:
                self._tg.cancel()  # the services the shutdown needed are done with


def default_state_dir(app: str) -> Path:
    """``$XDG_STATE_HOME/capsule/state/<app>`` (default ``~/.local/state``): private storage
    and copy-on-write changes of the app's features."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "capsule" / "state" / app


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def container_uids(supervisor_pid: int) -> range:
    """The host uids a root supervisor maps its containers' root to: 256 of its own."""
    first = _UID_BASE + ((supervisor_pid & 0xFFFF) << 8)
    return range(first, first + 256)


def _pickle_feature(feature: Feature) -> bytes:
    """cloudpickle a Feature, by value for every module the container cannot import.

    Handlers defined in a test module or the host program travel as code; capsule's
    own (the fault services) travel by reference.
    """
    handlers = [
        *feature.services.values(),
        *(f for listeners in feature.listeners.values() for f in listeners),
        *feature.start_hooks,
        *feature.stop_hooks,
    ]
    modules = {
        sys.modules[name]
        for name in {getattr(h, "__module__", "") for h in handlers}
        if name in sys.modules and name != "__main__" and name.partition(".")[0] != "capsule"
    }
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        pickled: bytes = cloudpickle.dumps(feature)
        return pickled
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def _load(app: str | os.PathLike[str] | App) -> App:
    if isinstance(app, App):
        return app
    return load_app(Path(app))


@asynccontextmanager
async def open_supervisor(
    app: str | os.PathLike[str] | App,
    *,
    inline: Mapping[str, Feature] | None = None,
    start_timeout: float = 10.0,
    stop_timeout: float = 5.0,
    call_timeout: float = 30.0,
    audit: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    view_timeouts: ViewTimeouts | None = None,
) -> AsyncIterator[Supervisor]:
    """Run every feature of ``app`` (an app directory, or a loaded App) until the block ends.

    Features start in dependency order, each in its own sandboxed container; a
    feature that fails is restarted per its policy and the app's strategy, and
    quarantined past its restart limit, while the rest keep running. ``inline``
    runs the given Feature objects (shipped with cloudpickle) instead of the
    bundles' entries, for tests and embedding. On exit every container is stopped
    and every mount, cgroup and temporary directory is removed.

    Every decision of the broker and of the file-system servers is written as JSON lines
    to ``audit`` (by default ``$XDG_STATE_HOME/capsule/audit/<app>/<run>.jsonl``;
    ``sup.audit_path`` says where). Features' private storage and their copy-on-write
    changes are kept beneath ``state_dir`` (by default
    ``$XDG_STATE_HOME/capsule/state/<app>``), across restarts and updates.
    ``view_timeouts`` bounds how long a file-system server may take to mount a view and to
    answer its liveness probe (a server that does not answer is aborted, and its
    container ended and restarted per its policy). A feature's environment holds nothing of
    this program's but the variables its policy names (``env``); a ``from_host`` one that is
    not set here raises ConfigError.
    """
    loaded = _load(app)
    unknown = sorted(set(inline or ()) - set(loaded.features))
    if unknown:
        raise ConfigError(
            f"inline features not in app {loaded.manifest.name!r}: {', '.join(unknown)}"
        )
    environments = feature_environments(loaded, os.environ)  # from_host values, read once
    async with anyio.create_task_group() as tg:
        sup = Supervisor._create(
            loaded,
            tg,
            inline=inline or {},
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            call_timeout=call_timeout,
            audit=None if audit is None else Path(audit),
            state_dir=None if state_dir is None else Path(state_dir),
            view_timeouts=view_timeouts or ViewTimeouts(),
            environments=environments,
        )
        try:
            await sup._open()
            yield sup
        finally:
            await sup._close()
            tg.cancel_scope.cancel()
