"""What the host program holds while it talks through the broker: events, subscriptions,
a call's pending answer and a stream's items.

Must not authorize or route: the broker fills these; the host program reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, final

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from capsule._ipc._messages import Error
from capsule._ipc._outcome import exception_for
from capsule._ipc._payload import decode_payload
from capsule.errors import ProtocolError

__all__ = ["Event", "HostCall", "Stream", "Subscription"]


@final
@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its topic, its payload and who published it.

    ``sender`` is a feature name, ``"@host"`` for the host program, or ``"@capsule"`` for the
    runtime's own events (``capsule.service.up``, ``capsule.service.down``).
    """

    topic: str
    payload: Any
    sender: str


@final
class Subscription:
    """Events on the topics a pattern matches, for the host program.

    Iterate it (``async for event in sub``); close it with ``aclose()`` or use it as an
    async context manager. The buffer is bounded: when the host reads slower than
    events arrive, the newest are dropped and counted in ``dropped``.
    """

    def __init__(self, pattern: str, buffer: int, on_close: Callable[[Subscription], None]) -> None:
        self.pattern = pattern
        self.dropped = 0
        self._send: MemoryObjectSendStream[Event]
        self._receive: MemoryObjectReceiveStream[Event]
        self._send, self._receive = anyio.create_memory_object_stream[Event](buffer)
        self._on_close = on_close
        self.closed = False

    def offer(self, topic: str, payload: msgspec.Raw, sender: str) -> bool:
        if self.closed:
            return False
        try:
            value = decode_payload(payload, f"event {topic} from {sender}")
        except ProtocolError:
            self.dropped += 1
            return False
        try:
            self._send.send_nowait(Event(topic, value, sender))
        except anyio.WouldBlock:
            self.dropped += 1
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> Event:
        """The next event (``anyio.EndOfStream`` once closed)."""
        return await self._receive.receive()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close(self)
            self._send.close()
            self._receive.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@final
class HostCall:
    """The host's side of one call or stream in flight through the broker."""

    __slots__ = ("_items", "_receive", "done", "error", "value")

    def __init__(self, window: int = 0) -> None:
        self.done = anyio.Event()
        self.value: msgspec.Raw | None = None
        self.error: Error | None = None
        self._items: MemoryObjectSendStream[msgspec.Raw] | None = None
        self._receive: MemoryObjectReceiveStream[msgspec.Raw] | None = None
        if window:
            self._items, self._receive = anyio.create_memory_object_stream[msgspec.Raw](math.inf)

    def close(self) -> None:
        """Release the item buffer (the reader is done with it)."""
        if self._receive is not None:
            self._receive.close()
        if self._items is not None:
            self._items.close()

    def finish(self, value: msgspec.Raw | None, error: Error | None) -> None:
        if self.done.is_set():
            return
        self.value, self.error = value, error
        self.done.set()
        if self._items is not None:
            self._items.close()

    def item(self, value: msgspec.Raw) -> None:
        if self._items is not None:
            self._items.send_nowait(value)  # bounded by the credits the host gave


@final
class Stream:
    """A stream of values from a service, for the caller to iterate with backpressure.

    The callee may send ``window`` values ahead; each value read grants it one more.
    Use as ``async with sup.stream(...) as items: async for item in items: ...``;
    leaving the block early cancels the stream in the callee.
    """

    def __init__(
        self,
        feature: str,
        service: str,
        call: HostCall,
        *,
        grant_more: Callable[[int], None],
        cancel: Callable[[], None],
    ) -> None:
        self.feature = feature
        self.service = service
        self._call = call
        self._grant_more = grant_more
        self._cancel = cancel
        self._finished = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        receive = self._call._receive
        if receive is None or self._finished:
            raise StopAsyncIteration
        try:
            value = await receive.receive()
        except anyio.EndOfStream:
            self._finished = True
            self._call.close()
            error = self._call.error
            if error is not None:
                raise exception_for(error, caller="@host") from None
            raise StopAsyncIteration from None
        except BaseException:
            self._stop()
            raise
        self._grant_more(1)
        return decode_payload(value, f"stream {self.feature}.{self.service}")

    def _stop(self) -> None:
        if not self._finished:
            self._finished = True
            self._cancel()
        self._call.close()

    async def aclose(self) -> None:
        self._stop()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()
