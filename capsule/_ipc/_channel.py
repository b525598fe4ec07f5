"""Length-prefixed msgpack frames over a byte stream, decoded into one closed message set.

The size limit is checked before a byte of the body is decoded; a bad frame raises
ProtocolError and the channel is then unusable. No routing and no policy here.
"""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import msgspec

from capsule.errors import ChannelClosedError, ProtocolError

__all__ = ["HEADER", "MAX_FRAME", "Channel", "FrameBuffer", "encode_frame"]

T = TypeVar("T")

HEADER: Final = 4
MAX_FRAME: Final = 1 << 20
_READ_SIZE: Final = 65536
HIGH_WATER: Final = 1 << 20

_encoder = msgspec.msgpack.Encoder()


def encode_frame(message: object) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise ProtocolError(
            f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit"
        )
    return len(body).to_bytes(HEADER, "big") + body


class FrameBuffer(Generic[T]):
    """Bytes in, decoded messages out; refuses an oversized or undecodable frame.

    ``message_type`` is a message struct or a union of them (annotate the variable).
    """

    def __init__(self, message_type: Any, *, max_frame: int = MAX_FRAME) -> None:
        self._decoder = msgspec.msgpack.Decoder(message_type)
        self._max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> T | None:
        """The next complete message, or None until more bytes arrive."""
        if len(self._buffer) < HEADER:
            return None
        size = int.from_bytes(self._buffer[:HEADER], "big")
        if size > self._max_frame:
            raise ProtocolError(f"frame of {size} bytes exceeds the {self._max_frame}-byte limit")
        end = HEADER + size
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER:end])
        del self._buffer[:end]
        try:
            message: T = self._decoder.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None
        return message

    @property
    def pending(self) -> int:
        return len(self._buffer)


class Channel(Generic[T]):
    """One end of a container's socketpair: send any message, receive messages of type T.

    Sends are combined: while one task writes, others append their frames and return
    (in order), and the writing task sends everything queued in one write. A sender
    waits only when more than HIGH_WATER bytes are queued (backpressure).
    """

    def __init__(
        self, stream: anyio.abc.ByteStream, message_type: Any, *, max_frame: int = MAX_FRAME
    ) -> None:
        self._stream = stream
        self._frames: FrameBuffer[T] = FrameBuffer(message_type, max_frame=max_frame)
        self._queue: list[bytes] = []
        self._queued = 0
        self._writing = False
        self._drained = anyio.Event()
        self._broken: ChannelClosedError | None = None

    async def send(self, message: object) -> None:
        frame = encode_frame(message)
        if self._broken is not None:
            raise self._broken
        self._queue.append(frame)
        self._queued += len(frame)
        if self._writing:
            if self._queued > HIGH_WATER:
                await self._drained.wait()
            return
        self._writing = True
        try:
            with anyio.CancelScope(shield=True):  # a half-written frame would break the channel
                while self._queue:
                    data = b"".join(self._queue)
                    self._queue.clear()
                    self._queued = 0
                    self._drained.set()
                    self._drained = anyio.Event()
                    try:
                        await self._stream.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                        self._broken = ChannelClosedError("the channel is closed")
                        raise self._broken from exc
        finally:
            self._writing = False
            self._drained.set()

    async def receive(self) -> T:
        while True:
            message = self._frames.next()
            if message is not None:
                return message
            try:
                data = await self._stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise ChannelClosedError("the channel is closed") from exc
            except OSError as exc:
                raise ChannelClosedError(f"the channel failed: {exc}") from exc
            self._frames.feed(data)

    async def aclose(self) -> None:
        await self._stream.aclose()
