"""Length-prefixed msgpack frames over a byte stream, decoded into one closed message set.

The size limit is checked before a byte of the body is decoded; a bad frame raises
ProtocolError and the channel is then unusable. No routing and no policy here.

A container's channel also receives the sockets the supervisor passes (SCM_RIGHTS): each
arrives with the first byte of the one frame that announces it, and only that frame can
claim it (:meth:`Channel.take_passed`); a descriptor no frame claims is closed as soon as
the frames read past it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.lowlevel
import msgspec

from capsule.errors import ChannelClosedError, ProtocolError

__all__ = ["HEADER", "MAX_FRAME", "Channel", "FrameBuffer", "encode_frame"]

T = TypeVar("T")

HEADER: Final = 4
MAX_FRAME: Final = 1 << 20
_READ_SIZE: Final = 65536
HIGH_WATER: Final = 1 << 20
_CHECKPOINT_EVERY: Final = 64
_SIZE: Final = struct.Struct(">I")  # the HEADER: a frame's length, big-endian
_FD_SIZE: Final = array.array("i").itemsize
_PASSED_SPACE: Final = socket.CMSG_SPACE(4 * _FD_SIZE)  # one is sent; room to see more
_CTRUNC: Final = int(socket.MSG_CTRUNC)  # a plain int: an IntFlag's & runs Python code
_CLOEXEC: Final = int(socket.MSG_CMSG_CLOEXEC)

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

    Frames are parsed in place at an offset into the bytes a read brought: no copy of
    the buffer per frame, only of each frame's body (Raw payloads keep that copy). Bytes
    are joined only when a frame spans reads.
    """

    def __init__(self, message_type: Any, *, max_frame: int = MAX_FRAME) -> None:
        self._decoder = msgspec.msgpack.Decoder(message_type)
        self._max_frame = max_frame
        self._buffer: bytes | bytearray = b""
        self._pos = 0  # where the next frame starts in _buffer
        self._consumed = 0
        #: bytes fed so far: the stream offset just past the buffer
        self.received = 0
        #: the stream offset of the frame ``next`` returned last
        self.start = 0

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        buffer = self._buffer
        if self._pos >= len(buffer):  # all parsed: the read's own bytes, uncopied
            self._buffer = data
            self._pos = 0
        elif type(buffer) is bytearray:  # a frame spanning reads, being gathered
            if self._pos:
                del buffer[: self._pos]
                self._pos = 0
            buffer += data
        else:
            with memoryview(buffer) as view:
                joined = bytearray(view[self._pos :])
            joined += data
            self._buffer = joined
            self._pos = 0

    def next(self) -> T | None:
        """The next complete message, or None until more bytes arrive."""
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < HEADER:
            return None
        size: int = _SIZE.unpack_from(buffer, pos)[0]
        if size > self._max_frame:
            raise ProtocolError(f"frame of {size} bytes exceeds the {self._max_frame}-byte limit")
        end = pos + HEADER + size
        if len(buffer) < end:
            return None
        if type(buffer) is bytes:  # one copy: Raw payloads keep their body
            body = buffer[pos + HEADER : end]
        else:  # not a view of the bytearray: it changes under the Raw payloads
            with memoryview(buffer) as view:
                body = bytes(view[pos + HEADER : end])
        self._pos = end
        self.start = self._consumed
        self._consumed += end - pos
        try:
            message: T = self._decoder.decode(body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError, not DecodeError, for a string that is not UTF-8
            raise ProtocolError(f"undecodable frame: {exc}") from None
        return message

    def read_size(self, least: int) -> int:
        """How many bytes to read next: ``least``, or the rest of a frame that is larger
        (a large frame arrives in a few reads, not one per ``least`` bytes)."""
        pending = len(self._buffer) - self._pos
        if pending < HEADER:
            return least
        size: int = _SIZE.unpack_from(self._buffer, self._pos)[0]
        return max(least, min(size, self._max_frame) + HEADER - pending)

    @property
    def pending(self) -> int:
        return len(self._buffer) - self._pos


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass(slots=True)
class _Passed:
    """Descriptors one read brought, with the stream offsets of the bytes it read."""

    start: int
    end: int
    fds: list[int]
    truncated: bool


class Channel(Generic[T]):
    """One end of a container's socketpair: send any message, receive messages of type T.

    Works on the non-blocking socket directly: a send that the socket takes at once
    costs one system call and no trip through the scheduler. ``send`` writes now (what
    ``send_soon`` queued goes first, in order); ``send_soon`` only queues, for
    ``write_loop`` or the next ``send`` to write in one batch. A sender waits only
    when more than HIGH_WATER bytes are queued (backpressure).

    With ``passed_fds``, reads also take the descriptors the supervisor passes, for
    :meth:`take_passed`; without it they are refused by the kernel as they arrive.
    """

    def __init__(
        self,
        sock: socket.socket,
        message_type: Any,
        *,
        max_frame: int = MAX_FRAME,
        passed_fds: bool = False,
    ) -> None:
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own signature
        self._sock = sock
        self._frames: FrameBuffer[T] = FrameBuffer(message_type, max_frame=max_frame)
        self._queue: list[bytes] = []
        self._queued = 0
        self._draining = False
        self._drained = anyio.Event()
        self._wake = anyio.Event()
        self._broken: ChannelClosedError | None = None
        self._soon = 0
        self._unwaited = 0
        self._emptied = False  # the last read was short: the socket held no more
        self._passes_fds = passed_fds
        self._passed: deque[_Passed] = deque()

    # -- sending -----------------------------------------------------------------------

    def _push(self) -> bool:
        """Write what is queued without waiting; True when the socket took all of it."""
        queue = self._queue
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._queued = 0
            self._broken = ChannelClosedError(f"the channel is closed: {exc}")
            raise self._broken from exc
        if sent < len(data):
            queue.append(data[sent:])
            self._queued = len(data) - sent
            return False
        self._queued = 0
        return True

    async def _drain(self) -> None:
        """Wait until everything queued is written (one task at a time does the writing)."""
        if self._draining:
            await self._drained.wait()
            return
        self._draining = True
        try:
            with anyio.CancelScope(shield=True):  # a half-written frame would break the channel
                while self._queue:
                    try:
                        await anyio.wait_writable(self._sock)
                    except (OSError, anyio.ClosedResourceError) as exc:
                        self._broken = ChannelClosedError("the channel is closed")
                        raise self._broken from exc
                    self._push()
        finally:
            self._draining = False
            self._drained.set()
            self._drained = anyio.Event()

    def _enqueue(self, message: object) -> None:
        if self._broken is not None:
            raise self._broken
        frame = encode_frame(message)
        self._queue.append(frame)
        self._queued += len(frame)

    async def send(self, message: object) -> None:
        """Write ``message`` now, after anything queued before it."""
        self._enqueue(message)
        if self._draining:
            if self._queued > HIGH_WATER:
                await self._drained.wait()
            return
        if not self._push():
            await self._drain()

    async def send_soon(self, message: object) -> None:
        """Queue ``message`` to be written with the next batch (events, log lines)."""
        self._enqueue(message)
        self._wake.set()
        if self._queued > HIGH_WATER:
            if self._draining:
                await self._drained.wait()
            elif not self._push():
                await self._drain()
        else:
            self._soon += 1
            if self._soon % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def flush(self) -> None:
        """Write everything queued, waiting for the socket if it must."""
        if self._queue and not self._draining and not self._push():
            await self._drain()
        elif self._draining:
            await self._drained.wait()

    async def write_loop(self) -> None:
        """Write what ``send_soon`` queued, as soon as the sender yields."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._queue and not self._draining and not self._push():
                await self._drain()

    # -- receiving ---------------------------------------------------------------------

    async def _wait_readable(self) -> None:
        self._emptied = False
        self._unwaited = 0
        try:
            await anyio.wait_readable(self._sock)
        except (OSError, anyio.ClosedResourceError) as exc:
            raise ChannelClosedError("the channel is closed") from exc

    async def receive(self) -> T:
        while True:
            message = self._frames.next()
            if message is not None:
                if self._passed:
                    self._drop_unclaimed(self._frames.start)
                self._unwaited += 1
                if self._unwaited >= _CHECKPOINT_EVERY:  # a busy channel still lets others run
                    self._unwaited = 0
                    await anyio.lowlevel.checkpoint()
                return message
            if self._emptied:  # the last read took all there was: a read now would fail
                await self._wait_readable()
                continue
            try:
                size = self._frames.read_size(_READ_SIZE)
                data = self._recv_passing(size) if self._passes_fds else self._sock.recv(size)
            except BlockingIOError:
                await self._wait_readable()
                continue
            except OSError as exc:
                raise ChannelClosedError(f"the channel failed: {exc}") from exc
            if not data:
                raise ChannelClosedError("the channel is closed")
            self._emptied = len(data) < size
            self._frames.feed(data)

    # -- descriptors passed by the supervisor ------------------------------------------

    def _recv_passing(self, size: int) -> bytes:
        data, ancillary, flags, _ = self._sock.recvmsg(size, _PASSED_SPACE, _CLOEXEC)
        truncated = bool(flags & _CTRUNC)
        if ancillary or truncated:
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
            start = self._frames.received
            self._passed.append(_Passed(start, start + len(data), fds.tolist(), truncated))
        return data

    def _drop_unclaimed(self, offset: int) -> None:
        """Close what arrived with bytes wholly before ``offset``: no frame can claim it now."""
        while self._passed and self._passed[0].end <= offset:
            _close_fds(self._passed.popleft().fds)

    def take_passed(self) -> socket.socket:
        """The socket passed with the frame ``receive`` returned last (an Opened).

        Raises as :meth:`take_passed_fd` does, and OSError when the descriptor is no socket.
        """
        fd = self.take_passed_fd()
        try:
            return socket.socket(fileno=fd)
        except OSError:
            _close_fds([fd])
            raise

    def take_passed_fd(self) -> int:
        """The descriptor passed with the frame ``receive`` returned last (now the caller's).

        Raises ProtocolError when none came with it, and OSError (EMFILE) when the kernel
        had to drop it (MSG_CTRUNC: most often, this process is at its open-files limit).
        Whatever else came with that frame is closed.
        """
        start = self._frames.start
        self._drop_unclaimed(start)
        passed = self._passed[0] if self._passed else None
        if passed is None or passed.start > start:
            raise ProtocolError("a descriptor was announced, but no descriptor came with it")
        self._passed.popleft()
        if passed.truncated or len(passed.fds) != 1:
            _close_fds(passed.fds)
            if passed.truncated:
                raise OSError(
                    errno.EMFILE,
                    "the descriptor was lost in transfer (MSG_CTRUNC): is this container at "
                    "its open-files limit?",
                )
            raise ProtocolError(f"{len(passed.fds)} descriptors came with one frame")
        return passed.fds[0]

    def close_passed(self) -> None:
        """Close every descriptor received and not taken (when the channel is done)."""
        while self._passed:
            _close_fds(self._passed.popleft().fds)
