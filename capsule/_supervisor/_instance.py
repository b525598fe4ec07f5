"""One run of one feature's container: launch, handshake, calls in flight, exit.

Owns the container's channel, pidfd and cgroup for as long as it lives. Decides no
restart: it reports how the container ended and the supervisor decides.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
import msgspec
import structlog

from capsule._ipc._channel import Channel
from capsule._ipc._messages import (
    Call,
    Cancel,
    Failure,
    FromContainer,
    Hello,
    Log,
    Ready,
    Reply,
    Start,
    Stop,
)
from capsule._sandbox._cgroups import CgroupStats, ContainerCgroup
from capsule._spawn._client import SpawnResult, ZygoteClient
from capsule._spawn._protocol import SpawnRequest
from capsule._supervisor._handshake import Expectation, check_status
from capsule.errors import (
    ChannelClosedError,
    FeatureCrashedError,
    FeatureStartError,
    IPCError,
    ProtocolError,
    RemoteError,
)

__all__ = ["Ending", "Instance", "LaunchSpec"]

_log = structlog.get_logger("capsule.supervisor")
_EXIT_WAIT: Final = 2.0
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


@dataclass(slots=True)
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None
    error: Exception | None = None


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
        channel: Channel[FromContainer],
        cgroup: ContainerCgroup | None,
    ) -> None:
        self.spec = spec
        self.feature = spec.feature
        self.pid = spawned.pid
        self._pidfd = spawned.pidfd
        self._zygote = zygote
        self._channel = channel
        self.cgroup = cgroup
        self.ready: Ready | None = None
        self.hello: Hello | None = None
        self._calls: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._stop_requested = False
        self.ended = anyio.Event()
        self.ending: Ending | None = None
        self.on_end: Callable[[Ending], None] | None = None
        self.logs: deque[str] = deque(maxlen=_LOG_TAIL)
        self.calls_total = 0
        self.started_at = anyio.current_time()

    # -- starting ---------------------------------------------------------------------

    @classmethod
    async def launch(
        cls, spec: LaunchSpec, zygote: ZygoteClient, cgroup: ContainerCgroup | None
    ) -> Instance:
        """Spawn, check the sandbox report, deliver tokens and code, wait for ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            spawned = await zygote.spawn(spec.request, theirs)
        except BaseException:
            ours.close()
            raise
        stream = await anyio.abc.UNIXSocketStream.from_socket(ours)
        channel: Channel[FromContainer] = Channel(stream, FromContainer)
        instance = cls(spec, zygote, spawned, channel, cgroup)
        try:
            with anyio.fail_after(spec.start_timeout):
                await instance._handshake()
        except TimeoutError:
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
            message = await self._channel.receive()
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
        await self._channel.send(self.spec.start)
        try:
            ready = await self._next()
        except ChannelClosedError:
            raise FeatureStartError(self.feature, "exited while loading its code") from None
        if not isinstance(ready, Ready):
            raise self._start_failed(ready, "loading its code failed")
        self.ready = ready

    # -- running ----------------------------------------------------------------------

    def _log_line(self, log: Log) -> None:
        self.logs.append(log.text)
        _log.info("feature output", feature=self.feature, stream=log.stream, text=log.text)

    async def serve(self) -> Ending:
        """Read the container's messages until it ends; returns how it ended."""
        try:
            while True:
                message = await self._channel.receive()
                if isinstance(message, Reply | Failure):
                    self._answer(message)
                elif isinstance(message, Log):
                    self._log_line(message)
                else:
                    raise ProtocolError(  # noqa: TRY301 - handled with the decoder's own errors
                        f"unexpected {type(message).__name__} after ready"
                    )
        except ChannelClosedError:
            pass
        except ProtocolError as exc:
            _log.error("container broke the protocol", feature=self.feature, error=str(exc))
            await self.kill()
        with anyio.move_on_after(_EXIT_WAIT) as scope:
            status = await self._zygote.wait_exit(self.pid)
        if scope.cancelled_caught:  # closed its channel but lives on: end it
            await self.kill()
            status = await self._zygote.wait_exit(self.pid)
        ending = self._finish(status)
        await self._channel.aclose()
        return ending

    def _answer(self, message: Reply | Failure) -> None:
        pending = self._calls.get(message.id)
        if pending is None:
            return  # a late answer to a call that timed out or was cancelled
        if isinstance(message, Reply):
            pending.value = message.value
        else:
            pending.error = RemoteError(
                self.feature, message.type, message.message, message.traceback
            )
        pending.done.set()

    def _finish(self, status: int | None) -> Ending:
        stats = self.statistics()
        code, sig, reason = _describe(status, 0 if stats is None else stats.oom_kills)
        self.ending = Ending(code, sig, requested=self._stop_requested, reason=reason)
        if self.on_end is not None:  # the supervisor acts before any caller hears of it
            self.on_end(self.ending)
        error = self.ending.error(self.feature)
        for pending in self._calls.values():
            pending.error = error
            pending.done.set()
        os.close(self._pidfd)
        self._pidfd = -1
        self.ended.set()
        return self.ending

    async def call(self, service: str, payload: Any) -> Any:
        if self.ended.is_set():
            ending = self.ending or Ending(None, None, requested=False, reason="ended")
            raise ending.error(self.feature)
        call_id = next(self._ids)
        pending = _Pending()
        self._calls[call_id] = pending
        self.calls_total += 1
        try:
            try:
                await self._channel.send(Call(id=call_id, service=service, payload=payload))
            except msgspec.EncodeError as exc:
                raise TypeError(f"the request to {self.feature}.{service}: {exc}") from None
            except ChannelClosedError:
                await self.ended.wait()
            await pending.done.wait()
        except BaseException:
            if not pending.done.is_set() and not self.ended.is_set():
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._channel.send(Cancel(id=call_id))
            raise
        finally:
            self._calls.pop(call_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.value

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    # -- ending -----------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Ask the feature to stop; kill it if it has not ended after ``grace`` seconds."""
        self._stop_requested = True
        if self.ended.is_set():
            return
        with contextlib.suppress(IPCError):
            await self._channel.send(Stop(reason="stopped by the supervisor"))
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
        """SIGKILL through the pidfd: its whole PID namespace goes with it."""
        self.send_signal(signal.SIGKILL)
        if self.ready is None and self._pidfd >= 0:  # not served yet: reap here
            status = await self._zygote.wait_exit(self.pid)
            self._finish(status)
        await self._channel.aclose()

    def statistics(self) -> CgroupStats | None:
        if self.cgroup is None:
            return None
        try:
            return self.cgroup.stats()
        except OSError:
            return None
