"""The runtime inside a container: the handshake, then serving calls until told to stop.

Runs sandboxed, as PID 1 of the container; speaks only through its one channel and
never trusts the feature code it loads to behave (a failing handler fails its call).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import socket
import sys
import traceback
from collections import deque
from typing import Any, Final, TextIO

import anyio
import anyio.abc
import anyio.lowlevel
import cloudpickle
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from capsule._broker._topics import matches
from capsule._container._client import CALLER, BrokerClient
from capsule._container._feature import Context, Feature
from capsule._ipc._channel import Channel
from capsule._ipc._messages import (
    Admitted,
    Call,
    Cancel,
    End,
    Entry,
    Error,
    Event,
    ExportState,
    Failure,
    FromSupervisor,
    Granted,
    Hello,
    ImportState,
    Item,
    Lagged,
    Log,
    More,
    Opened,
    Ready,
    Renewed,
    Reply,
    Result,
    SandboxStatus,
    Start,
    StateDone,
    Stop,
)
from capsule._ipc._payload import decode_payload as decode
from capsule._ipc._payload import encode_payload as encode
from capsule._ipc._statefile import read_state, write_state
from capsule.errors import ChannelClosedError, ProtocolError

__all__ = ["EXIT_CLEAN", "EXIT_FAILED", "serve"]

EXIT_CLEAN: Final = 0
EXIT_FAILED: Final = 1
_LOG_BUFFER: Final = 256
_LOG_LINE: Final = 8192
_EVENT_BUDGET: Final = 16 << 20
"""Bytes of events waiting for this container's listeners; newer ones are dropped past it."""
_EVENT_OVERHEAD: Final = 128
_NAME_MAX: Final = 256
_TEXT_MAX: Final = 32768


def _failure(call_id: int, exc: BaseException) -> Failure:
    kind = type(exc)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    text = "".join(traceback.format_exception(exc))
    return Failure(
        id=call_id,
        type=f"{module}{kind.__qualname__}"[:_NAME_MAX],
        message=str(exc)[:_TEXT_MAX],
        traceback=text[-_TEXT_MAX:],  # the end of a traceback says the most
    )


def _describe(exc: BaseException) -> str:
    """``Type: message`` of a failed hook, bounded."""
    return f"{type(exc).__qualname__}: {exc}"[:_TEXT_MAX]


def _note(text: str) -> None:
    """A line from the runtime itself, on the feature's stderr (so in the supervisor's log)."""
    sys.stderr.write(f"capsule: {text}\n")


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
    """The container's reader: calls in, answers to its own requests, events, grants."""

    def __init__(self, channel: Channel[FromSupervisor], client: BrokerClient) -> None:
        self.channel = channel
        self.client = client
        self.feature: Feature | None = None
        self.ctx: Context | None = None
        self.calls: dict[int, trio.CancelScope] = {}
        self.answering = 0  # calls running that are not streams (each will answer once)
        self.credits: dict[int, list[int]] = {}
        self.credit_events: dict[int, anyio.Event] = {}
        self.events: deque[Event] = deque()
        self.events_queued = 0  # bytes, against _EVENT_BUDGET
        self.events_arrived = anyio.Event()
        self.events_dropped = 0
        self.events_lagged = 0  # dropped by the broker before they reached us (Lagged)
        self.stopped = anyio.Event()

    async def handle(self, call: Call, scope: trio.CancelScope) -> None:
        feature, ctx = self.feature, self.ctx
        assert feature is not None  # noqa: S101 - calls come after ready
        assert ctx is not None  # noqa: S101 - calls come after ready
        CALLER.set(call.caller)
        with scope:
            try:
                handler = feature.services.get(call.service)
                if handler is None:
                    known = ", ".join(sorted(feature.services)) or "none"
                    raise LookupError(  # noqa: TRY301 - answered as this call's failure
                        f"no service {call.service!r} (services: {known})"
                    )
                request = decode(call.payload, f"the request to {call.service}")
                result = handler(ctx, request)
                if inspect.iscoroutine(result) or inspect.isawaitable(result):
                    result = await result
                if call.stream:
                    await self._stream(call, result)
                    answer: Reply | Failure | End = End(id=call.id)
                elif hasattr(result, "__aiter__"):
                    raise TypeError(  # noqa: TRY301 - answered as this call's failure
                        f"service {call.service!r} returns a stream: call it with stream()"
                    )
                else:
                    answer = Reply(id=call.id, value=encode(result, f"the reply of {call.service}"))
            except Exception as exc:
                answer = _failure(call.id, exc)
            finally:
                self.calls.pop(call.id, None)
                self.credits.pop(call.id, None)
                self.credit_events.pop(call.id, None)
                if not call.stream:
                    self.answering -= 1
        if not scope.cancelled_caught:
            if self.answering:  # more answers are coming: one write takes them all (the
                # last answer's, or the channel's writer once this batch of tasks has run)
                await self.channel.send_soon(answer)
            else:
                await self.channel.send(answer)

    async def _stream(self, call: Call, result: Any) -> None:
        if not hasattr(result, "__aiter__"):
            raise TypeError(
                f"service {call.service!r} was called as a stream but returned "
                f"{type(result).__name__}, not an async iterator"
            )
        credit = self.credits.setdefault(call.id, [call.window])
        async for value in result:
            while credit[0] <= 0:
                event = anyio.Event()
                self.credit_events[call.id] = event
                await event.wait()
            credit[0] -= 1
            await self.channel.send(Item(id=call.id, value=encode(value, f"{call.service} item")))

    def _passed_file(self) -> int | str:
        """The memory file that came with the frame just read (ExportState, ImportState),
        taken now as ``_opened`` takes a socket; or why none came."""
        try:
            return self.channel.take_passed_fd()
        except (ProtocolError, OSError) as exc:
            return f"no state file came with the request: {exc}"

    async def export_state(self, message: ExportState, file: int | str) -> None:
        """Run the export_state hook; write its bytes into the file passed, then StateDone."""
        feature, ctx = self.feature, self.ctx
        hook = None if feature is None else feature.state_export
        error = ""
        try:
            if hook is not None and ctx is not None:
                try:
                    if isinstance(file, str):
                        raise ProtocolError(file)  # noqa: TRY301 - answered as its failure
                    data = await hook(ctx)
                    if not isinstance(data, bytes | bytearray | memoryview):
                        raise TypeError(  # noqa: TRY301 - answered as this export's failure
                            f"export_state returned {type(data).__name__}, not bytes"
                        )
                    size = memoryview(data).nbytes
                    if size > message.limit:
                        raise ValueError(  # noqa: TRY301 - answered as this export's failure
                            f"export_state returned {size} bytes, over the {message.limit}-byte "
                            "limit (update.state_max of the feature's policy in app.toml)"
                        )
                    write_state(file, data)
                except Exception as exc:
                    _note("export_state failed:")
                    traceback.print_exc()
                    error = _describe(exc)
        finally:
            if isinstance(file, int):
                os.close(file)  # before StateDone: the supervisor seals the file then
        hooked = hook is not None and ctx is not None
        await self.channel.send(StateDone(id=message.id, hooked=hooked, error=error))

    async def import_state(self, message: ImportState, file: int | str) -> None:
        """Read the state from the file passed, run the import_state hook on it, StateDone."""
        feature, ctx = self.feature, self.ctx
        hook = None if feature is None else feature.state_import
        error = ""
        try:
            if hook is not None and ctx is not None:
                try:
                    if isinstance(file, str):
                        raise ProtocolError(file)  # noqa: TRY301 - answered as its failure
                    data = read_state(file)
                    os.close(file)
                    file = ""  # closed: the hook may run long
                    await hook(ctx, message.from_version, data)
                except Exception as exc:
                    _note("import_state failed:")
                    traceback.print_exc()
                    error = _describe(exc)
        finally:
            if isinstance(file, int):
                os.close(file)
        hooked = hook is not None and ctx is not None
        await self.channel.send(StateDone(id=message.id, hooked=hooked, error=error))

    def _more(self, message: More) -> None:
        credit = self.credits.get(message.id)
        if credit is not None:
            credit[0] += message.n
            event = self.credit_events.pop(message.id, None)
            if event is not None:
                event.set()

    async def listen(self) -> None:
        """Run the listeners of each event in arrival order, one event at a time."""
        handled = 0
        while True:
            if not self.events:
                self.events_arrived = anyio.Event()
                await self.events_arrived.wait()
                continue
            event = self.events.popleft()
            self.events_queued -= len(event.payload) + len(event.topic) + _EVENT_OVERHEAD
            handled += 1
            if handled % 64 == 0:  # listeners that never wait must not starve the reader
                await anyio.lowlevel.checkpoint()
            feature, ctx = self.feature, self.ctx
            if feature is None or ctx is None:
                continue
            try:
                payload = decode(event.payload, f"event {event.topic}")
            except ProtocolError as exc:
                _note(f"dropped {exc}")
                continue
            CALLER.set(event.sender)
            for pattern, listeners in feature.listeners.items():
                if not matches(pattern, event.topic):
                    continue
                for listener in listeners:
                    try:
                        await listener(ctx, payload)
                    except Exception:
                        _note(f"listener for {pattern} failed on {event.topic}:")
                        traceback.print_exc()

    def _queue_event(self, event: Event) -> None:
        """Keep an event for the listeners; past the budget, drop it (and say so, sparingly)."""
        size = len(event.payload) + len(event.topic) + _EVENT_OVERHEAD
        if self.events_queued + size > _EVENT_BUDGET:
            self.events_dropped += 1
            if self.events_dropped in (1, 10, 100, 1000) or self.events_dropped % 10000 == 0:
                _note(f"listeners are behind: {self.events_dropped} event(s) dropped so far")
            return
        self.events.append(event)
        self.events_queued += size
        self.events_arrived.set()

    async def admit_granted(self, granted: Granted) -> None:
        try:
            held = await self.client.admit(granted.token)
        except Exception as exc:
            _note(f"a token from {granted.sender} was refused: {exc}")
            return
        _note(f"{granted.sender} delegated {', '.join(held.capabilities)}")

    def _opened(self, message: Opened) -> None:
        """Take the socket that came with ``message`` off the channel, now: it is claimed by
        this frame or closed (nothing else may take it)."""
        try:
            sock = self.channel.take_passed()
        except (ProtocolError, OSError) as exc:
            self.client.opened(message, None, exc)
        else:
            self.client.opened(message, sock, None)

    async def read(self, tg: anyio.abc.TaskGroup) -> None:
        """Read until Stop (then return, the calls still running cancelled) or until the
        channel closes (ChannelClosedError).

        Each call runs in a task of its own, spawned in a trio nursery with a trio cancel
        scope (this runtime runs on trio only): anyio's wrappers of the two were a fifth of
        this process's busy time per call (py-spy, sequential 64-byte calls).
        """
        async with trio.open_nursery() as calls:
            try:
                await self._read(tg, calls)
            finally:
                calls.cancel_scope.cancel()

    async def _read(self, tg: anyio.abc.TaskGroup, calls: trio.Nursery) -> None:
        while True:
            message = await self.channel.receive()
            if isinstance(message, Call):
                # registered before its task runs: a Cancel may arrive before it starts
                call_scope = self.calls[message.id] = trio.CancelScope()
                if not message.stream:
                    self.answering += 1
                calls.start_soon(self.handle, message, call_scope)
            elif isinstance(message, _ANSWERS):
                self.client.answer(message)
            elif isinstance(message, Opened):
                self._opened(message)
            elif isinstance(message, Event):
                self._queue_event(message)
            elif isinstance(message, More):
                self._more(message)
            elif isinstance(message, Cancel):
                scope = self.calls.get(message.id)
                if scope is not None:
                    scope.cancel()
            elif isinstance(message, Granted):
                tg.start_soon(self.admit_granted, message)
            elif isinstance(message, Renewed):
                self.client.renewed(message)
            elif isinstance(message, Lagged):
                self.events_lagged += message.dropped
                _note(
                    f"lagged: the broker dropped {message.dropped} event(s) "
                    f"({self.events_lagged} so far): this feature read its channel too slowly"
                )
            elif isinstance(message, ExportState):
                tg.start_soon(self.export_state, message, self._passed_file())
            elif isinstance(message, ImportState):
                tg.start_soon(self.import_state, message, self._passed_file())
            elif isinstance(message, Stop):
                self.stopped.set()
                return
            else:
                raise ProtocolError(f"unexpected {type(message).__name__} after start")


_ANSWERS: Final = (Result, Error, Admitted, Item, End)


async def _pump_logs(
    channel: Channel[FromSupervisor], logs: MemoryObjectReceiveStream[Log]
) -> None:
    async for log in logs:
        await channel.send_soon(log)


async def _main(fd: int, status: SandboxStatus) -> int:
    channel: Channel[FromSupervisor] = Channel(
        socket.socket(fileno=fd), FromSupervisor, passed_fds=True
    )
    send_log, receive_log = anyio.create_memory_object_stream[Log](_LOG_BUFFER)
    stdout, stderr = _LogWriter("stdout", send_log), _LogWriter("stderr", send_log)
    sys.stdout, sys.stderr = stdout, stderr
    async with anyio.create_task_group() as tg:
        tg.start_soon(_pump_logs, channel, receive_log)
        async with anyio.create_task_group() as writer:
            writer.start_soon(channel.write_loop)
            try:
                code = await _session(channel, status)
            finally:
                stdout.flush()
                stderr.flush()
                send_log.close()  # the pump sends what is buffered, then ends
                writer.cancel_scope.cancel()
    with contextlib.suppress(ChannelClosedError), anyio.move_on_after(1):
        await channel.flush()  # the last log lines the pump queued
    channel.close_passed()
    return code


def _take_environment(env: list[tuple[str, str]]) -> None:
    """Make ``env`` the whole environment, before the feature's code is loaded: what
    ``os.environ`` shows and what a program the feature runs inherits."""
    os.environ.clear()
    os.environ.update(env)


async def _session(channel: Channel[FromSupervisor], status: SandboxStatus) -> int:
    await channel.send(Hello(status=status))
    start = await channel.receive()
    if not isinstance(start, Start):
        raise ProtocolError(f"expected start, got {type(start).__name__}")
    _take_environment(start.env)
    client = BrokerClient(channel, start.feature)
    server = _Server(channel, client)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.read, tg)
        code = await _start(server, start, tg)
        if code == EXIT_CLEAN:
            await server.stopped.wait()
        tg.cancel_scope.cancel()
    if code == EXIT_CLEAN and server.feature is not None and server.ctx is not None:
        for hook in server.feature.stop_hooks:
            await hook(server.ctx)
    return code


async def _start(server: _Server, start: Start, tg: anyio.abc.TaskGroup) -> int:
    """Admit the tokens, load the code, subscribe its listeners, run on_start, then Ready."""
    ctx = Context(start.feature, start.version, server.client)
    try:
        for token in start.tokens:
            await server.client.admit(token)
        feature = _load(start)
        server.feature, server.ctx = feature, ctx
        tg.start_soon(server.listen)
        for pattern in feature.listeners:
            await server.client.subscribe(pattern)
        for hook in feature.start_hooks:
            await hook(ctx)
    except Exception as exc:
        await server.channel.send(_failure(0, exc))
        return EXIT_FAILED
    await server.channel.send(
        Ready(services=sorted(feature.services), topics=sorted(feature.listeners))
    )
    return EXIT_CLEAN


def serve(fd: int, status: SandboxStatus) -> int:
    """Run the container until it is stopped; returns the process exit code."""
    original: TextIO = sys.__stderr__ or sys.stderr
    try:
        return anyio.run(_main, fd, status, backend="trio")
    except Exception:
        traceback.print_exc(file=original)
        return EXIT_FAILED
