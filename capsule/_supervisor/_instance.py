"""One run of one feature's container: launch, handshake, calls in flight, exit.

Owns the container's channel, pidfd and cgroup for as long as it lives. Decides no
restart: it reports how the container ended and the supervisor decides.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Final

import anyio
import anyio.abc
import structlog

from capsule._broker._broker import Broker
from capsule._broker._connection import Connection
from capsule._broker._routes import ShadowMark
from capsule._ipc._messages import (
    Failure,
    FromContainer,
    Hello,
    Log,
    Ready,
    Start,
    StateDone,
    Stop,
)
from capsule._sandbox._cgroups import CgroupStats, ContainerCgroup
from capsule._spawn._client import RootHandover, SpawnResult, ZygoteClient
from capsule._spawn._protocol import SpawnRequest
from capsule._supervisor._handoff import Handoff
from capsule._supervisor._handshake import Expectation, check_status
from capsule._supervisor._views import ViewServer
from capsule._tasks import TaskStarter
from capsule.errors import (
    ChannelClosedError,
    FeatureCrashedError,
    FeatureStartError,
    FeatureUnavailableError,
    ProtocolError,
    RemoteError,
    SandboxError,
)

__all__ = ["Ending", "Instance", "LaunchSpec"]

_log = structlog.get_logger("capsule.supervisor")
_EXIT_WAIT: Final = 2.0
#: how long :meth:`Instance.freeze` waits, by default, for the container to report FROZEN
_FREEZE_WAIT: Final = 2.0
_LOG_TAIL: Final = 50


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything needed to start one container of a feature."""

    feature: str
    version: str
    request: SpawnRequest
    expectation: Expectation
    start: Start
    start_timeout: float


@dataclass(frozen=True, slots=True)
class Ending:
    """How a container ended: asked to stop, exited with a code, or killed by a signal."""

    exit_code: int | None
    signal: int | None
    _: KW_ONLY
    requested: bool
    reason: str

    @property
    def clean(self) -> bool:
        return self.exit_code == 0

    def error(self, feature: str) -> FeatureCrashedError:
        return FeatureCrashedError(
            feature, self.reason, exit_code=self.exit_code, signal=self.signal
        )


def _describe(status: int | None, oom_kills: int) -> tuple[int | None, int | None, str]:
    if status is None:
        return None, None, "lost track of it (the zygote exited)"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return code, None, f"exited with code {code}"
    sig = -code
    name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    if oom_kills and sig == signal.SIGKILL:
        return None, sig, "killed by its memory limit (out of memory)"
    if sig == signal.SIGSYS:
        return None, sig, "killed by its seccomp filter (SIGSYS)"
    return None, sig, f"killed by {name}"


class Instance:
    """A started container. Built by :meth:`launch`; ends through :meth:`kill` or on its own."""

    def __init__(
        self,
        spec: LaunchSpec,
        zygote: ZygoteClient,
        spawned: SpawnResult,
        conn: Connection,
        *,
        broker: Broker,
        cgroup: ContainerCgroup | None,
        view: ViewServer | None = None,
        shadow: ShadowMark | None = None,
    ) -> None:
        self.spec = spec
        self.view = view
        self._failure: str | None = None
        self.feature = spec.feature
        self.pid = spawned.pid
        self._pidfd = spawned.pidfd
        self._zygote = zygote
        self._conn = conn
        self._broker = broker
        self.peer = broker.attach(conn, spec.feature, landlock_abi=spec.expectation.landlock_abi)
        self.peer.shadow = shadow  # a shadow variant from its first message on
        self.cgroup = cgroup
        self.handoff = Handoff(spec.feature, conn)  # its state, during a live update
        self.ready: Ready | None = None
        self.hello: Hello | None = None
        self._start_failure: Failure | None = None
        self._became_ready = anyio.Event()
        self._serving = False
        self._stop_requested = False
        self.ended = anyio.Event()
        #: set once it has ended and its view and cgroup are gone as well
        self.released = anyio.Event()
        self.ending: Ending | None = None
        self.on_end: Callable[[Ending], None] | None = None
        self.logs: deque[str] = deque(maxlen=_LOG_TAIL)
        self.started_at = anyio.current_time()
        conn.on_overrun = self._overrun

    # -- starting ---------------------------------------------------------------------

    @classmethod
    async def launch(
        cls,
        spec: LaunchSpec,
        zygote: ZygoteClient,
        cgroup: ContainerCgroup | None,
        *,
        broker: Broker,
        task_group: TaskStarter,
        prepared: RootHandover | None = None,
        view: Callable[[], Awaitable[ViewServer]] | None = None,
        shadow: ShadowMark | None = None,
    ) -> Instance:
        """Spawn, check the sandbox report, deliver tokens and code, wait for ready.

        From the moment the code is delivered the container is served in
        ``task_group``: it may admit tokens and call other features while it starts.
        ``prepared`` is its request (:meth:`ZygoteClient.prepare`, closed here), whose
        sources whoever starts its view sends once the view is mounted; without ``view``
        they are sent here. ``view`` returns its file-system server once the sources are
        sent; the server is watched from then on (its failure ends the container) and
        stopped when the container has ended.
        """
        if prepared is None:
            prepared = zygote.prepare(spec.request)
        if view is None:
            prepared.send()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            spawned = await zygote.spawn(prepared, theirs)
        except BaseException:
            ours.close()
            prepared.close()
            raise
        conn = Connection(ours, spec.feature, broker.outbox, broker.turns)
        instance = cls(spec, zygote, spawned, conn, broker=broker, cgroup=cgroup, shadow=shadow)
        try:
            with anyio.fail_after(spec.start_timeout):
                if view is not None:
                    instance.view = await view()
                    task_group.start_soon(instance.view.serve, instance.fail)
                await instance._handshake()
                instance._serving = True
                task_group.start_soon(instance._run)
                await instance._wait_ready()
        except TimeoutError:
            with anyio.CancelScope(shield=True):
                await instance.kill()
            raise FeatureStartError(
                spec.feature, f"did not become ready within {spec.start_timeout:g}s"
            ) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await instance.kill()
            raise
        return instance

    async def _next(self) -> FromContainer:
        while True:
            message = await self._conn.receive()
            if isinstance(message, Log):
                self._log_line(message)
                continue
            return message

    def _start_failed(self, message: FromContainer | None, stage: str) -> FeatureStartError:
        if isinstance(message, Failure):
            error = FeatureStartError(self.feature, f"{stage}: {message.type}: {message.message}")
            error.__cause__ = RemoteError(
                self.feature, message.type, message.message, message.traceback
            )
            return error
        shown = "nothing" if message is None else type(message).__name__
        return FeatureStartError(self.feature, f"{stage}: expected a report, got {shown}")

    async def _handshake(self) -> None:
        try:
            hello = await self._next()
        except ChannelClosedError:
            raise FeatureStartError(self.feature, "its sandbox failed before reporting") from None
        if not isinstance(hello, Hello):
            raise self._start_failed(hello, "building its sandbox failed")
        problems = check_status(hello.status, self.spec.expectation)
        if problems:
            _log.error("container refused", feature=self.feature, problems=problems)
            raise FeatureStartError(
                self.feature, "came up weaker than its policy: " + "; ".join(problems)
            )
        self.hello = hello
        self._conn.send(self.spec.start)

    async def _wait_ready(self) -> None:
        async with anyio.create_task_group() as tg:

            async def ended() -> None:
                await self.ended.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(ended)
            await self._became_ready.wait()
            tg.cancel_scope.cancel()
        if self.ready is None:
            if self._start_failure is not None:
                raise self._start_failed(self._start_failure, "loading its code failed")
            reason = self.ending.reason if self.ending is not None else "ended"
            raise FeatureStartError(self.feature, f"ended while loading its code ({reason})")

    # -- running ----------------------------------------------------------------------

    def _log_line(self, log: Log) -> None:
        self.logs.append(log.text)
        _log.info("feature output", feature=self.feature, stream=log.stream, text=log.text)

    def _dispatch(self, message: FromContainer) -> None:
        kind = type(message)
        if kind is Log:
            self._log_line(message)  # type: ignore[arg-type]
        elif kind is Ready:
            if self.ready is not None:
                raise ProtocolError("reported ready twice")
            self.ready = message  # type: ignore[assignment]
            self.peer.services = frozenset(self.ready.services)  # type: ignore[union-attr]
            self._became_ready.set()
        elif kind is Failure and message.id == 0:  # type: ignore[union-attr]
            if self.ready is not None:
                raise ProtocolError("reported a start failure after ready")
            self._start_failure = message  # type: ignore[assignment]
        elif kind is StateDone:
            self.handoff.received(message)  # type: ignore[arg-type]
        elif kind is Hello:
            raise ProtocolError("sent a second hello")
        else:
            self._broker.dispatch(self.peer, message)

    def fail(self, reason: str) -> None:
        """End the container for ``reason`` (its view failed, say): audited, then SIGKILL."""
        if self.ended.is_set():
            return
        self._failure = reason
        self._broker.audit.record("end", feature=self.feature, decision="end", reason=reason)
        _log.error("container ended", feature=self.feature, reason=reason)
        self.send_signal(signal.SIGKILL)

    async def revoke_files(self, tokens: frozenset[str]) -> None:
        """Close the mounts of its view that ``tokens`` grant; returns once no operation
        through them can succeed. A view that cannot confirm that ends the container, and
        this returns once it has ended."""
        if self.view is None or self.ended.is_set() or await self.view.revoke(tokens):
            return
        self.fail(self.view.failure or "its file-system server did not confirm a revocation")
        with anyio.move_on_after(_EXIT_WAIT):
            await self.ended.wait()
        if not self.ended.is_set():  # never expected: say so rather than hang the supervisor
            _log.error("container outlived SIGKILL", feature=self.feature, pid=self.pid)

    def delegations(self) -> int:
        """Live tokens this feature delegated (they count against its delegations limit)."""
        return self._broker.delegations(self.feature)

    def _overrun(self) -> None:
        reason = self._conn.overrun_reason
        self._broker.audit.record("end", feature=self.feature, decision="end", reason=reason)
        _log.error("container ended", feature=self.feature, reason=reason)
        self.send_signal(signal.SIGKILL)

    async def _run(self) -> None:
        """Serve the container's messages until it ends; reap it; release its cgroup."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._conn.write_loop)
            try:
                await self._conn.read_loop(self._dispatch)
            except ChannelClosedError:
                pass
            except ProtocolError as exc:
                self._broker.audit.record(
                    "end",
                    feature=self.feature,
                    decision="end",
                    reason=f"broke the protocol: {exc}",
                )
                _log.error("container broke the protocol", feature=self.feature, error=str(exc))
                self.send_signal(signal.SIGKILL)
            except Exception as exc:  # a bug of ours: end this container, keep the app
                self._broker.audit.record(
                    "end", feature=self.feature, decision="end", reason=f"internal error: {exc!r}"
                )
                _log.exception("internal error serving a container", feature=self.feature)
                self.send_signal(signal.SIGKILL)
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_EXIT_WAIT) as scope:
                status = await self._zygote.wait_exit(self.pid)
            if scope.cancelled_caught:  # closed its channel but lives on: end it
                self.send_signal(signal.SIGKILL)
                status = await self._zygote.wait_exit(self.pid)
            try:
                self._finish(status)
                self._conn.close()
                if self.view is not None:
                    await self.view.stop()
                if self.cgroup is not None:
                    await anyio.to_thread.run_sync(self.cgroup.remove)
            finally:
                self.released.set()

    def _finish(self, status: int | None) -> Ending:
        if self.ending is not None:
            return self.ending
        stats = self.statistics()
        code, sig, reason = _describe(status, 0 if stats is None else stats.oom_kills)
        if self._failure is not None:
            reason = f"{self._failure}; {reason}"
        self.ending = Ending(code, sig, requested=self._stop_requested, reason=reason)
        if self.on_end is not None:  # the supervisor acts before any caller hears of it
            self.on_end(self.ending)
        self._broker.detach(self.peer, self.ending.error(self.feature))
        self.handoff.ended()
        os.close(self._pidfd)
        self._pidfd = -1
        self.ended.set()
        return self.ending

    @property
    def in_flight(self) -> int:
        return len(self.peer.calls)

    @property
    def calls_total(self) -> int:
        return self.peer.calls_total

    # -- ending -----------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Ask the feature to stop; kill it if it has not ended after ``grace`` seconds.

        A frozen container (see :meth:`freeze`) is killed at once, without being asked.
        """
        self._stop_requested = True
        if self.ended.is_set():
            return
        if self.frozen:  # it cannot answer, and thawing it would let it run again: end it
            _log.info("stopping a frozen container: killed", feature=self.feature)
            await self.kill()
            with anyio.move_on_after(_EXIT_WAIT):
                await self.ended.wait()
            return
        self._conn.send(Stop(reason="stopped by the supervisor"))
        with anyio.move_on_after(grace):
            await self.ended.wait()
        if not self.ended.is_set():
            _log.warning("feature ignored stop", feature=self.feature, grace=grace)
            await self.kill()
            with anyio.move_on_after(_EXIT_WAIT):
                await self.ended.wait()
            if not self.ended.is_set():  # never expected: say so rather than hang the supervisor
                _log.error("container outlived SIGKILL", feature=self.feature, pid=self.pid)

    def send_signal(self, sig: int) -> None:
        """Signal the container's outer process through its pidfd (no pid reuse race)."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    async def kill(self) -> None:
        """SIGKILL through the pidfd: its whole PID namespace goes with it.

        A frozen container would hold that SIGKILL pending until thawed, so its cgroup is
        killed instead: every process gets SIGKILL while frozen, then dies as it thaws, none
        running again. Its file-system server is spared, to be stopped as the container ends.
        """
        if self.cgroup is not None and self.frozen:
            spare = () if self.view is None else (self.view.pid,)
            await anyio.to_thread.run_sync(functools.partial(self.cgroup.kill, spare=spare))
            if self.view is not None:  # thawed with the rest, it answers probes again
                self.view.probes_held = False
        self.send_signal(signal.SIGKILL)
        if not self._serving and self._pidfd >= 0:  # not served yet: reap here
            status = await self._zygote.wait_exit(self.pid)
            self._finish(status)
            self._conn.close()
            if self.view is not None:
                await self.view.stop()
            self.released.set()  # its cgroup is the launcher's to remove

    # -- freezing ---------------------------------------------------------------------

    def _freezable(self, action: str) -> ContainerCgroup:
        if self.ended.is_set():
            raise FeatureUnavailableError(
                self.feature, f"cannot {action} feature {self.feature!r}: its container has ended"
            )
        if self.cgroup is None:
            raise SandboxError(
                f"cannot {action} feature {self.feature!r}: its container has no cgroup, since "
                "this supervisor cannot create cgroups; fix: see `capsule doctor`"
            )
        return self.cgroup

    @property
    def frozen(self) -> bool:
        """Whether the container's cgroup reports it frozen now (False without a cgroup)."""
        return self.cgroup is not None and not self.ended.is_set() and self.cgroup.frozen

    async def freeze(
        self,
        timeout: float = _FREEZE_WAIT,  # noqa: ASYNC109 - bounds the kernel's freeze, in a thread
    ) -> None:
        """Stop every process of the container where it stands, until :meth:`thaw`.

        Waits in a worker thread until the cgroup reports FROZEN. Its file-system server, in
        the same cgroup, freezes with it and is not probed meanwhile. Calls to it wait (their
        deadlines run); :meth:`kill` and :meth:`stop` still end it. Raises SandboxError
        when the container has no cgroup or does not freeze within ``timeout`` seconds (it is
        thawed again then), FeatureUnavailableError when it has ended.
        """
        cgroup = self._freezable("freeze")
        if self.view is not None:  # its file-system server shares the cgroup: frozen, not hung
            self.view.probes_held = True
        try:
            await anyio.to_thread.run_sync(cgroup.freeze, timeout)
        except BaseException:
            if self.view is not None:  # freeze() thawed the group again
                self.view.probes_held = False
            raise

    async def thaw(self) -> None:
        """Let the container run again after :meth:`freeze`. Idempotent.

        A signal sent while it was frozen (a pending SIGKILL) takes effect now.
        """
        cgroup = self._freezable("thaw")
        await anyio.to_thread.run_sync(cgroup.thaw)
        if self.view is not None:
            self.view.probes_held = False

    def statistics(self) -> CgroupStats | None:
        if self.cgroup is None:
            return None
        try:
            return self.cgroup.stats()
        except OSError:
            return None
