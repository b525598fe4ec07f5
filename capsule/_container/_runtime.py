"""The runtime inside a container: the handshake, then serving calls until told to stop.

Runs sandboxed, as PID 1 of the container; speaks only through its one channel and
never trusts the feature code it loads to behave (a failing handler fails its call).
"""

from __future__ import annotations

import importlib
import io
import socket
import sys
import traceback
from typing import Final, TextIO

import anyio
import anyio.abc
import cloudpickle
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from capsule._container._feature import Context, Feature
from capsule._ipc._channel import Channel
from capsule._ipc._messages import (
    Call,
    Cancel,
    Entry,
    Failure,
    FromSupervisor,
    Hello,
    Log,
    Ready,
    Reply,
    SandboxStatus,
    Start,
    Stop,
)
from capsule.errors import ProtocolError

__all__ = ["EXIT_CLEAN", "EXIT_FAILED", "serve"]

EXIT_CLEAN: Final = 0
EXIT_FAILED: Final = 1
_LOG_BUFFER: Final = 256
_LOG_LINE: Final = 8192


def _failure(call_id: int, exc: BaseException) -> Failure:
    kind = type(exc)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return Failure(
        id=call_id,
        type=f"{module}{kind.__qualname__}",
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )


class _LogWriter(io.TextIOBase):
    """sys.stdout / sys.stderr: whole lines become Log messages; drops lines when flooded."""

    def __init__(self, stream: str, send: MemoryObjectSendStream[Log]) -> None:
        self._stream = stream
        self._send = send
        self._partial = ""
        self.dropped = 0

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if len(self._partial) > _LOG_LINE:
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            try:
                self._send.send_nowait(Log(stream=self._stream, text=line[:_LOG_LINE]))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.dropped += 1
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")


def _load(start: Start) -> Feature:
    code = start.code
    if isinstance(code, Entry):
        sys.path.insert(0, start.bundle)
        module = importlib.import_module(code.module)
        feature = getattr(module, code.attribute)
    else:
        feature = cloudpickle.loads(code.pickled)
    if not isinstance(feature, Feature):
        raise TypeError(f"{start.feature}: the entry is a {type(feature).__name__}, not a Feature")
    return feature


class _Server:
    def __init__(self, channel: Channel[FromSupervisor], feature: Feature, ctx: Context) -> None:
        self.channel = channel
        self.feature = feature
        self.ctx = ctx
        self.calls: dict[int, anyio.CancelScope] = {}

    async def handle(self, call: Call, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self.calls[call.id] = scope
            task_status.started()
            try:
                handler = self.feature.services.get(call.service)
                if handler is None:
                    known = ", ".join(sorted(self.feature.services)) or "none"
                    raise LookupError(  # noqa: TRY301 - answered as this call's failure
                        f"no service {call.service!r} (services: {known})"
                    )
                value = await handler(self.ctx, call.payload)
                msgspec.msgpack.encode(value)
                answer: Reply | Failure = Reply(id=call.id, value=value)
            except Exception as exc:
                answer = _failure(call.id, exc)
            finally:
                self.calls.pop(call.id, None)
            await self.channel.send(answer)

    async def run(self) -> int:
        async with anyio.create_task_group() as tg:
            while True:
                message = await self.channel.receive()
                if isinstance(message, Call):
                    await tg.start(self.handle, message)
                elif isinstance(message, Cancel):
                    scope = self.calls.get(message.id)
                    if scope is not None:
                        scope.cancel()
                elif isinstance(message, Stop):
                    tg.cancel_scope.cancel()
                    break
                else:
                    raise ProtocolError(f"unexpected {type(message).__name__} after start")
        for hook in self.feature.stop_hooks:
            await hook(self.ctx)
        return EXIT_CLEAN


async def _pump_logs(
    channel: Channel[FromSupervisor], logs: MemoryObjectReceiveStream[Log]
) -> None:
    async for log in logs:
        await channel.send(log)


async def _main(fd: int, status: SandboxStatus) -> int:
    sock = socket.socket(fileno=fd)
    stream = await anyio.abc.UNIXSocketStream.from_socket(sock)
    channel: Channel[FromSupervisor] = Channel(stream, FromSupervisor)
    send_log, receive_log = anyio.create_memory_object_stream[Log](_LOG_BUFFER)
    stdout, stderr = _LogWriter("stdout", send_log), _LogWriter("stderr", send_log)
    sys.stdout, sys.stderr = stdout, stderr
    async with anyio.create_task_group() as tg:
        tg.start_soon(_pump_logs, channel, receive_log)
        try:
            code = await _session(channel, status)
        finally:
            stdout.flush()
            stderr.flush()
            send_log.close()  # the pump sends what is buffered, then ends
    return code


async def _session(channel: Channel[FromSupervisor], status: SandboxStatus) -> int:
    await channel.send(Hello(status=status))
    start = await channel.receive()
    if not isinstance(start, Start):
        raise ProtocolError(f"expected start, got {type(start).__name__}")
    ctx = Context(start.feature, start.version, tuple(start.tokens))
    try:
        feature = _load(start)
        for hook in feature.start_hooks:
            await hook(ctx)
    except Exception as exc:
        await channel.send(_failure(0, exc))
        return EXIT_FAILED
    await channel.send(Ready(services=sorted(feature.services), topics=sorted(feature.listeners)))
    return await _Server(channel, feature, ctx).run()


def serve(fd: int, status: SandboxStatus) -> int:
    """Run the container until it is stopped; returns the process exit code."""
    original: TextIO = sys.__stderr__ or sys.stderr
    try:
        return anyio.run(_main, fd, status, backend="trio")
    except Exception:
        traceback.print_exc(file=original)
        return EXIT_FAILED
