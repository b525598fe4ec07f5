"""The container's side of the broker: admitted tokens, requests and their answers, streams,
and the sockets the broker opens for ``ctx.connect`` and ``ctx.listen``.

Runs inside the sandbox, for feature code. It chooses which handle to name for an
action, but decides nothing: the broker checks every message again.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, final

import anyio
import anyio.abc
import msgspec
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from capsule._container._sockets import NetListener, NetStream
from capsule._ipc._channel import Channel
from capsule._ipc._messages import (
    Admit,
    Admitted,
    Cancel,
    Connect,
    Delegate,
    End,
    Error,
    FromSupervisor,
    Item,
    Listen,
    More,
    Opened,
    Publish,
    Renewed,
    Request,
    Result,
    Revoke,
    Subscribe,
)
from capsule._ipc._outcome import exception_for
from capsule._ipc._payload import decode_payload as decode
from capsule._ipc._payload import encode_payload as encode
from capsule._tokens._caps import Action, net_target, parse_capability
from capsule._tokens._grant import Grant
from capsule.errors import CapabilityDeniedError, ConfigError, ProtocolError

__all__ = ["CALLER", "BrokerClient", "HeldToken", "ItemStream"]

CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("capsule_caller", default=None)
"""The verified caller of the handler running in this task (a feature name, or "@host")."""

_WINDOW: Final = 16
_LONGEST: Final = 24 * 3600.0  # a timeout past this is as good as none (the broker caps it)
_MAX_BACKLOG: Final = 4096
_MAX_HOST: Final = 255
_MAX_PORT: Final = 65535


@final
@dataclass(frozen=True, slots=True)
class HeldToken:
    """A token this container holds, admitted by the broker under ``handle``."""

    handle: int
    token_id: str
    capabilities: tuple[str, ...]
    expires: float
    grant: Grant = field(repr=False, compare=False)


@dataclass(slots=True)
class _Waiter:
    # trio's own Event, not anyio's wrapper (made and waited on in every call, and this
    # runtime runs on trio only)
    done: trio.Event = field(default_factory=trio.Event)
    answer: Result | Admitted | None = None
    error: Error | None = None
    items: MemoryObjectSendStream[msgspec.Raw] | None = None
    sock: socket.socket | None = None  # what an Opened brought
    failure: Exception | None = None  # why an Opened brought nothing usable


@final
class ItemStream:
    """Values a service streams back: ``async with ctx.stream(...) as items: async for ...``.

    The request is sent when the block (or the iteration) starts; the callee may run
    ``window`` values ahead, and each value read grants it one more. Leaving the
    block early cancels the stream in the callee.
    """

    def __init__(self, client: BrokerClient, request: Callable[[int, int], Request]) -> None:
        self._client = client
        self._request = request
        self._id = 0
        self._waiter: _Waiter | None = None
        self._receive: MemoryObjectReceiveStream[msgspec.Raw] | None = None
        self._done = False
        self.what = "stream"

    async def _start(self) -> None:
        handle = await self._client.handle_for(Action.ICC_CALL, self.what)
        self._id = next(self._client._ids)
        send, self._receive = anyio.create_memory_object_stream[msgspec.Raw](math.inf)
        self._waiter = _Waiter(items=send)
        self._client._waiting[self._id] = self._waiter
        await self._client._send(self._request(self._id, handle))

    def __aiter__(self) -> ItemStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if self._receive is None:
            await self._start()
        assert self._receive is not None  # noqa: S101 - started above
        assert self._waiter is not None  # noqa: S101 - started above
        try:
            raw = await self._receive.receive()
        except anyio.EndOfStream:
            self._done = True
            self._receive.close()
            self._client._forget(self._id)
            if self._waiter.error is not None:
                raise exception_for(self._waiter.error, caller=self._client.feature) from None
            raise StopAsyncIteration from None
        await self._client._send(More(id=self._id, n=1))
        return decode(raw, f"stream {self.what}")

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            if self._receive is not None:
                self._receive.close()
                self._client._forget(self._id)
                with anyio.CancelScope(shield=True):
                    await self._client._send(Cancel(id=self._id))

    async def __aenter__(self) -> ItemStream:
        await self._start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@final
class BrokerClient:
    """Requests to the broker and their answers, matched by id."""

    def __init__(self, channel: Channel[FromSupervisor], feature: str) -> None:
        self._channel = channel
        self.feature = feature
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._asking = 0  # requests waiting in ask (not streams, not sockets)
        self.held: list[HeldToken] = []
        self._admitting = 0
        self._settled = anyio.Event()
        self._settled.set()

    async def _send(self, message: object) -> None:
        await self._channel.send(message)

    def _forget(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    # -- answers, from the runtime's reader ------------------------------------------

    def answer(self, message: Result | Error | Admitted | Item | End) -> None:
        waiter = self._waiting.get(message.id)
        if waiter is None:
            return  # a late answer to something given up on
        if isinstance(message, Item):
            if waiter.items is not None:
                waiter.items.send_nowait(message.value)
            return
        if isinstance(message, Error):
            waiter.error = message
        elif not isinstance(message, End):
            waiter.answer = message
        waiter.done.set()
        if waiter.items is not None:
            waiter.items.close()

    def opened(
        self, message: Opened, sock: socket.socket | None, failure: Exception | None
    ) -> None:
        """An Opened arrived with ``sock`` (or without one, for ``failure``); a socket nobody
        waits for any more is closed at once."""
        waiter = self._waiting.get(message.id)
        if waiter is None or waiter.done.is_set():
            if sock is not None:
                sock.close()
            return
        waiter.sock, waiter.failure = sock, failure
        waiter.done.set()

    # -- asking ------------------------------------------------------------------------

    async def ask(self, build: Callable[[int], object]) -> Result | Admitted:
        """Send the message ``build(id)`` and wait for its answer; raise its Error."""
        request_id = next(self._ids)
        waiter = _Waiter()
        self._waiting[request_id] = waiter
        self._asking += 1
        try:
            if self._asking > 1:  # others wait for answers: requests made while this batch
                # of tasks runs go in one write (the channel's writer's, after it)
                await self._channel.send_soon(build(request_id))
            else:
                await self._send(build(request_id))
            await waiter.done.wait()
        except BaseException:
            if not waiter.done.is_set():
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._send(Cancel(id=request_id))
            raise
        finally:
            self._asking -= 1
            self._waiting.pop(request_id, None)
        if waiter.error is not None:
            raise exception_for(waiter.error, caller=self.feature)
        assert waiter.answer is not None  # noqa: S101 - set with done, unless error is
        return waiter.answer

    async def admit(self, token: str) -> HeldToken:
        self._admitting += 1
        if self._admitting == 1:
            self._settled = anyio.Event()
        try:
            answer = await self.ask(lambda i: Admit(id=i, token=token))
        finally:
            self._admitting -= 1
            if self._admitting == 0:
                self._settled.set()
        if not isinstance(answer, Admitted):
            raise ProtocolError(f"expected admitted, got {type(answer).__name__}")
        caps = tuple(parse_capability(c) for c in answer.capabilities)
        held = HeldToken(
            answer.handle,
            answer.token_id,
            tuple(answer.capabilities),
            answer.expires,
            Grant(answer.token_id, self.feature, answer.expires, caps),
        )
        self.held = [h for h in self.held if h.handle != held.handle] + [held]
        return held

    def renewed(self, message: Renewed) -> None:
        """The broker renewed the token behind a handle: same handle, new id and expiry."""
        for index, held in enumerate(self.held):
            if held.handle == message.handle:
                caps = held.grant.capabilities
                self.held[index] = HeldToken(
                    held.handle,
                    message.token_id,
                    held.capabilities,
                    message.expires,
                    Grant(message.token_id, self.feature, message.expires, caps),
                )
                return

    async def handle_for(self, action: Action, target: str) -> int:
        """The handle of a held token that allows ``action`` on ``target``; 0 when none does
        (the broker then refuses and records it)."""
        if self._admitting:
            await self._settled.wait()
        now = time.time()
        for held in self.held:
            if held.grant.allows(action, target, now):
                return held.handle
        return 0

    async def call(self, feature: str, service: str, payload: Any, limit: float | None) -> Any:
        handle = await self.handle_for(Action.ICC_CALL, f"{feature}.{service}")
        raw = encode(payload, f"the request to {feature}.{service}")
        answer = await self.ask(
            lambda i: Request(
                id=i, handle=handle, feature=feature, service=service, payload=raw, timeout=limit
            )
        )
        if not isinstance(answer, Result):
            raise ProtocolError(f"expected a result, got {type(answer).__name__}")
        return decode(answer.value, f"the reply of {feature}.{service}")

    def stream(
        self, feature: str, service: str, payload: Any, timeout: float | None, window: int
    ) -> ItemStream:
        raw = encode(payload, f"the request to {feature}.{service}")
        stream = ItemStream(
            self,
            lambda request_id, handle: Request(
                id=request_id,
                handle=handle,
                feature=feature,
                service=service,
                payload=raw,
                timeout=timeout,
                stream=True,
                window=max(1, window or _WINDOW),
            ),
        )
        stream.what = f"{feature}.{service}"
        return stream

    async def publish(self, topic: str, payload: Any) -> None:
        handle = await self.handle_for(Action.ICC_PUBLISH, topic)
        raw = encode(payload, f"the event on {topic}")
        await self._channel.send_soon(Publish(handle=handle, topic=topic, payload=raw))
        if handle == 0:  # sent all the same, so the broker records the attempt
            raise CapabilityDeniedError(f"icc:publish:{topic}", self.feature, "not granted")

    async def subscribe(self, pattern: str) -> None:
        handle = await self.handle_for(Action.ICC_SUBSCRIBE, pattern)
        await self.ask(lambda i: Subscribe(id=i, handle=handle, pattern=pattern))

    async def delegate(self, capabilities: list[str], to: str, ttl: float | None) -> str:
        wanted = []
        for text in capabilities:
            try:
                wanted.append(parse_capability(text))
            except ConfigError as exc:
                raise ConfigError(f"delegating to {to}: {exc}") from None
        handle = 0
        now = time.time()
        for held in self.held:
            if all(held.grant.allows(a, c.target, now) for c in wanted for a in c.action_set()):
                handle = held.handle
                break
        if handle == 0 and self.held:
            handle = self.held[0].handle  # none covers it: the broker refuses and records it
        answer = await self.ask(
            lambda i: Delegate(id=i, handle=handle, to=to, capabilities=capabilities, ttl=ttl)
        )
        assert isinstance(answer, Result)  # noqa: S101 - Delegate is answered with a Result
        return str(decode(answer.value, "delegation"))

    async def revoke(self, token_id: str) -> int:
        answer = await self.ask(lambda i: Revoke(id=i, token_id=token_id))
        assert isinstance(answer, Result)  # noqa: S101 - Revoke is answered with a Result
        return int(decode(answer.value, "revocation"))

    # -- the network -------------------------------------------------------------------

    async def _net_handle(self, action: Action, host: str, port: int) -> int:
        if not isinstance(host, str) or len(host) > _MAX_HOST:
            raise ValueError(
                f"host must be a name or an address (255 characters at most): {host!r}"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _MAX_PORT:
            raise ValueError(f"port must be a whole number from 1 to 65535: {port!r}")
        try:
            target = net_target(host, port)
        except ConfigError:
            target = ""
        handle = await self.handle_for(action, target) if target else 0
        if handle == 0:  # sent all the same, under the token most likely meant (the broker
            # refuses it and records the attempt, naming that token)
            netted = [h for h in self.held if any(c.kind == "net" for c in h.grant.capabilities)]
            handle = next((h.handle for h in netted or self.held), 0)
        return handle

    async def _open(self, build: Callable[[int], Connect | Listen]) -> socket.socket:
        """Send ``build(id)`` and wait for the socket the broker passes back."""
        request_id = next(self._ids)
        waiter = _Waiter()
        self._waiting[request_id] = waiter
        try:
            await self._send(build(request_id))
            await waiter.done.wait()
        except BaseException:
            if waiter.sock is not None:
                waiter.sock.close()
            elif not waiter.done.is_set():
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._send(Cancel(id=request_id))
            raise
        finally:
            self._waiting.pop(request_id, None)
        if waiter.error is not None:
            raise exception_for(waiter.error, caller=self.feature)
        if waiter.sock is None:
            raise waiter.failure or ProtocolError("a socket was announced but not passed")
        return waiter.sock

    async def connect(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109 - the deadline travels with the request
    ) -> NetStream:
        if timeout is not None and not timeout >= 0:  # NaN included
            raise ValueError(f"timeout must be None or a number of seconds, not {timeout!r}")
        if timeout is not None:
            timeout = min(float(timeout), _LONGEST)
        handle = await self._net_handle(Action.NET_CONNECT, host, port)
        sock = await self._open(
            lambda i: Connect(id=i, handle=handle, host=host, port=port, timeout=timeout)
        )
        try:
            return NetStream(await anyio.abc.SocketStream.from_socket(sock))
        except BaseException:
            sock.close()
            raise

    async def listen(self, host: str, port: int, backlog: int) -> NetListener:
        backlog = max(0, min(int(backlog), _MAX_BACKLOG))
        handle = await self._net_handle(Action.NET_LISTEN, host, port)
        sock = await self._open(
            lambda i: Listen(id=i, handle=handle, host=host, port=port, backlog=backlog)
        )
        try:
            return NetListener(await anyio.abc.SocketListener.from_socket(sock))
        except BaseException:
            sock.close()
            raise
