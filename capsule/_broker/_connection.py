"""The broker's end of one container's channel: checked reads and a batched, bounded writer.

Moves frames only; no authorization and no routing (the broker does both). A read
that carries ancillary data (file descriptors, credentials) or a frame that is
oversized or undecodable raises ProtocolError; a write never blocks the caller.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Final, final

import anyio
import anyio.lowlevel

from capsule._ipc._channel import FrameBuffer, encode_frame
from capsule._ipc._messages import FromContainer
from capsule.errors import ChannelClosedError, ProtocolError

__all__ = ["FAIR_BATCH", "HARD_LIMIT", "SOFT_LIMIT", "Connection"]

_READ_SIZE: Final = 65536
_ANCILLARY: Final = socket.CMSG_SPACE(64 * array.array("i").itemsize)
FAIR_BATCH: Final = 16
"""Frames one connection may dispatch before every other connection gets a turn."""
SOFT_LIMIT: Final = 4 << 20
"""Queued bytes past which droppable frames (events) to this container are dropped."""
HARD_LIMIT: Final = 32 << 20
"""Queued bytes past which the container is taken as not reading its channel at all."""


def _close_passed_fds(ancillary: list[tuple[int, int, bytes]]) -> int:
    """Close every descriptor a peer pushed at us; returns how many there were."""
    count = 0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
                count += 1
    return count


@final
class Connection:
    """One container's channel as the broker sees it.

    ``put``/``send`` queue frames and return at once; ``write_loop`` drains the queue
    in batches (one ``send`` for many frames). ``read_loop`` hands each decoded
    message to ``dispatch`` synchronously, yielding to other connections every
    FAIR_BATCH frames so a flooding container gets its turn and no more.
    """

    def __init__(self, sock: socket.socket, feature: str) -> None:
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own signature
        self.sock = sock
        self.feature = feature
        self._frames: FrameBuffer[FromContainer] = FrameBuffer(FromContainer)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake = anyio.Event()
        self.closed = False
        self.overrun = False
        #: frames dropped because this container did not read its events fast enough
        self.dropped = 0
        self.on_overrun: Callable[[], None] | None = None

    # -- writing -----------------------------------------------------------------------

    def put(self, frame: bytes, *, droppable: bool = False) -> bool:
        """Queue one encoded frame; False when it was dropped or the channel is closed."""
        if self.closed:
            return False
        if self._out_bytes > SOFT_LIMIT:
            if droppable:
                self.dropped += 1
                return False
            if self._out_bytes > HARD_LIMIT and not self.overrun:
                self.overrun = True
                if self.on_overrun is not None:
                    self.on_overrun()
                return False
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._wake.set()
        return True

    def send(self, message: object) -> bool:
        return self.put(encode_frame(message))

    @property
    def queued(self) -> int:
        """Bytes waiting to be written to the container."""
        return self._out_bytes

    async def write_loop(self) -> None:
        """Write queued frames until the channel closes (then return quietly)."""
        while not self.closed:
            if not self._out:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._out_bytes = 0
            view = memoryview(data)
            while view:
                try:
                    sent = self.sock.send(view)
                except BlockingIOError:
                    try:
                        await anyio.wait_writable(self.sock)
                    except (OSError, anyio.ClosedResourceError):
                        self.closed = True
                        return
                    continue
                except OSError:
                    self.closed = True
                    return
                view = view[sent:]

    # -- reading -----------------------------------------------------------------------

    async def _fill(self) -> None:
        while True:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(_READ_SIZE, _ANCILLARY)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self.sock)
                except (OSError, anyio.ClosedResourceError) as exc:
                    raise ChannelClosedError("the channel is closed") from exc
                continue
            except (OSError, anyio.ClosedResourceError) as exc:
                raise ChannelClosedError(f"the channel failed: {exc}") from exc
            if ancillary or flags & socket.MSG_CTRUNC:
                passed = _close_passed_fds(ancillary)
                raise ProtocolError(
                    f"sent ancillary data ({passed} file descriptor(s)); "
                    "the channel carries bytes only"
                )
            if not data:
                raise ChannelClosedError("the channel is closed")
            self._frames.feed(data)
            return

    async def receive(self) -> FromContainer:
        """The next message (for the handshake, before the read loop runs)."""
        while True:
            message = self._frames.next()
            if message is not None:
                return message
            await self._fill()

    async def read_loop(self, dispatch: Callable[[FromContainer], None]) -> None:
        """Dispatch every message until the channel closes (ChannelClosedError) or a
        frame breaks the protocol (ProtocolError)."""
        frames = self._frames
        while True:
            handled = 0
            message = frames.next()
            while message is not None:
                dispatch(message)
                handled += 1
                if handled >= FAIR_BATCH:
                    handled = 0
                    await anyio.lowlevel.checkpoint()
                message = frames.next()
            await self._fill()

    def close(self) -> None:
        """Stop writing and close the socket (idempotent)."""
        if self.sock.fileno() < 0:
            return
        self.closed = True
        self._wake.set()
        anyio.notify_closing(self.sock)  # wakes a read or write waiting on it
        with contextlib.suppress(OSError):
            self.sock.close()
