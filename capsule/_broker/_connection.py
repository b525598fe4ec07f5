"""The broker's end of one container's channel: checked reads and a batched, bounded writer.

Moves frames only; no authorization and no routing (the broker does both). A read
that carries ancillary data (file descriptors, credentials) or a frame that is
oversized or undecodable raises ProtocolError; a write never blocks the caller.
Descriptors travel one way only: ``pass_socket`` sends a socket with the first byte of
the frame that announces it (the network mediator's answers).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Final, Protocol, final

import anyio
import anyio.lowlevel

from capsule._broker._fairness import TURN_FRAMES, Turns
from capsule._ipc._channel import FrameBuffer, encode_frame
from capsule._ipc._messages import FromContainer, Lagged
from capsule.errors import ChannelClosedError, ProtocolError

__all__ = ["FAIR_BATCH", "HARD_LIMIT", "SOFT_LIMIT", "Connection", "Outbox", "Passable"]

_READ_SIZE: Final = 65536
_ANCILLARY: Final = socket.CMSG_SPACE(64 * array.array("i").itemsize)
_CTRUNC: Final = int(socket.MSG_CTRUNC)  # a plain int: an IntFlag's & runs Python code
FAIR_BATCH: Final = TURN_FRAMES
"""Frames one connection may dispatch before every other connection gets a turn."""
SOFT_LIMIT: Final = 4 << 20
"""Queued bytes past which droppable frames (events) to this container are dropped, unless
its app sets another ``queue`` limit."""
HARD_LIMIT: Final = 32 << 20
"""Queued bytes past which the container is taken as not reading its channel at all (or
twice its ``queue`` limit, when that is more)."""
_BATCH: Final = 256 << 10
"""Bytes of queued frames joined into one send (about what the socket takes at once)."""
_FRAME_COST: Final = 64
"""What one queued frame costs beyond its bytes (the bytes object and its list slot)."""


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


class Passable(Protocol):
    """A descriptor to pass (a socket, a memory file): closed once the kernel holds it."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


@final
class _Passing:
    """A frame to write with a socket attached (SCM_RIGHTS on its first byte).

    ``fallback`` is written instead when the kernel refuses to pass the socket.
    """

    __slots__ = ("fallback", "frame", "sock")

    def __init__(self, frame: bytes, sock: Passable, fallback: bytes) -> None:
        self.frame = frame
        self.sock = sock
        self.fallback = fallback


#: errors of a sendmsg that refuse the descriptor but leave the channel usable
_UNPASSABLE: Final = frozenset({errno.ETOOMANYREFS, errno.ENOBUFS, errno.ENOMEM, errno.EMFILE})


@final
class Outbox:
    """Connections with frames to write, shared by every connection of one broker.

    Frames queued while a read loop dispatches a batch are written when the batch
    ends, one system call per connection, without a trip through the scheduler;
    frames queued elsewhere (the host, timers) wake ``run``, which does the same.
    """

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self.batching = 0
        self._wake = anyio.Event()
        self._woken = False

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self.batching and not self._woken:
            self._woken = True
            self._wake.set()

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.push()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            self._woken = False
            self.flush()


@final
class Connection:
    """One container's channel as the broker sees it.

    ``put``/``send`` queue frames and return at once; ``write_loop`` drains the queue
    in batches (one ``send`` for many frames). ``read_loop`` hands each decoded
    message to ``dispatch`` synchronously, in turns (``_fairness``): a flooding container
    gets its turn and no more.
    """

    def __init__(
        self, sock: socket.socket, feature: str, outbox: Outbox, turns: Turns | None = None
    ) -> None:
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own signature
        self.sock = sock
        self.feature = feature
        self._outbox = outbox
        self._dirty = False
        self._blocked = False
        self._frames: FrameBuffer[FromContainer] = FrameBuffer(FromContainer)
        self._emptied = False  # the last read was short: the socket held no more
        self._share = (turns or Turns()).share()
        self._out: list[bytes | memoryview | _Passing] = []
        self._out_bytes = 0
        self._low: tuple[int, anyio.Event] | None = None  # wait_queued_below's mark
        self._passing = 0  # _Passing entries in _out
        self._wake = anyio.Event()
        self.closed = False
        self.overrun = False
        #: frames dropped because this container did not read its events fast enough
        self.dropped = 0
        self._lagged = 0  # dropped and not yet told to the container
        #: queued bytes past which events are dropped (or the container closed, ``lag_close``)
        self.queue_limit = SOFT_LIMIT
        self.hard_limit = HARD_LIMIT
        self.lag_close = False
        self.overrun_reason = ""
        self.on_overrun: Callable[[], None] | None = None
        self.on_lag: Callable[[], None] | None = None

    @property
    def queued(self) -> int:
        """Bytes queued towards the container, not yet written (with each frame's cost)."""
        return self._out_bytes

    async def wait_queued_below(self, mark: int) -> None:
        """Wait until at most ``mark`` bytes are queued towards the container (or the
        channel closed): a bulk sender's pace, woken by the writes themselves."""
        while self._out_bytes > mark and not self.closed:
            event = anyio.Event()
            self._low = (mark, event)
            try:
                await event.wait()
            finally:
                self._low = None

    def _wrote(self) -> None:
        low = self._low
        if low is not None and (self._out_bytes <= low[0] or self.closed):
            low[1].set()

    def limit_queue(self, limit: int, *, close: bool) -> None:
        """Drop events past ``limit`` queued bytes (``close``: end the container instead)."""
        self.queue_limit = limit
        self.hard_limit = max(HARD_LIMIT, 2 * limit)
        self.lag_close = close

    # -- writing -----------------------------------------------------------------------

    def put(self, frame: bytes, *, droppable: bool = False) -> bool:
        """Queue one encoded frame; False when it was dropped or the channel is closed."""
        if self.closed:
            return False
        if self._out_bytes > self.queue_limit:
            if droppable:
                self.dropped += 1
                self._lagged += 1
                if self.on_lag is not None:
                    self.on_lag()
                if self.lag_close:
                    self._overrun(f"fell behind its events (over {self.queue_limit} bytes queued)")
                return False
            if self._out_bytes > self.hard_limit:
                self._overrun(f"stopped reading its channel (over {self.hard_limit} bytes queued)")
                return False
        self._out.append(frame)
        self._out_bytes += len(frame) + _FRAME_COST
        if not self._dirty and not self._blocked:
            self._dirty = True
            self._outbox.mark(self)
        return True

    def _overrun(self, reason: str) -> None:
        if self.overrun:
            return
        self.overrun = True
        self.overrun_reason = reason
        if self.on_overrun is not None:
            self.on_overrun()

    def _drained(self) -> None:
        """Everything queued was written: tell the container how many events it missed."""
        self._out_bytes = 0
        if self._lagged:
            dropped, self._lagged = self._lagged, 0
            self.put(encode_frame(Lagged(dropped=dropped)))

    def pass_socket(self, frame: bytes, sock: Passable, fallback: bytes) -> bool:
        """Queue ``frame`` with ``sock`` attached (a socket, or any descriptor with
        ``fileno`` and ``close``); the descriptor is ours from now on (closed
        once the kernel holds it, or if it cannot be sent). False when it was not queued."""
        if self.closed or self._out_bytes > self.hard_limit:
            sock.close()
            if not self.closed:  # as put() does: it is not reading
                self._overrun(f"stopped reading its channel (over {self.hard_limit} bytes queued)")
            return False
        self._out.append(_Passing(frame, sock, fallback))
        self._out_bytes += len(frame)
        self._passing += 1
        if not self._dirty and not self._blocked:
            self._dirty = True
            self._outbox.mark(self)
        return True

    def push(self) -> None:
        """Write what is queued without waiting; the writer task takes over a full socket."""
        self._dirty = False
        if self._blocked or self.closed or not self._out:
            return
        if self._passing:
            self._push_passing()
            self._wrote()
            return
        out: list[bytes | memoryview] = self._out  # type: ignore[assignment] # no _Passing among them
        while out:
            # small frames go in one send; a large one (state handoff) alone, uncopied
            count, size = 1, len(out[0])
            while count < len(out) and size < _BATCH:
                size += len(out[count])
                count += 1
            data = out[0] if count == 1 else b"".join(out[:count])
            sent = self._send(data)
            if sent < 0:
                self._wrote()
                return
            if sent < len(data):
                out[:count] = [memoryview(data)[sent:]]  # a view: the rest is not copied again
                self._out_bytes = max(0, self._out_bytes - sent)
                self._block()
                self._wrote()
                return
            del out[:count]
            self._out_bytes = max(0, self._out_bytes - size - count * _FRAME_COST)
        self._drained()
        self._wrote()

    def _send(self, data: bytes | memoryview, sock: Passable | None = None) -> int:
        """Bytes of ``data`` written (with ``sock`` attached), 0 when the channel is full, -1
        when it failed (then closed). A socket the kernel refuses to pass raises OSError."""
        try:
            if sock is None:
                return self.sock.send(data)
            rights = array.array("i", [sock.fileno()]).tobytes()
            return self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        except BlockingIOError:
            return 0
        except OSError as exc:
            if sock is not None and exc.errno in _UNPASSABLE:
                raise
            self._fail()
            return -1

    def _block(self) -> None:
        self._blocked = True
        self._wake.set()

    def _push_passing(self) -> None:
        """``push`` with sockets queued: runs of frames in one send, each socket with its frame."""
        out = self._out
        while out:
            head = out[0]
            if isinstance(head, _Passing):
                try:
                    sent = self._send(head.frame, head.sock)
                except OSError:  # the kernel would not pass it: say so instead
                    head.sock.close()
                    self._passing -= 1
                    self._out_bytes += len(head.fallback) - len(head.frame)
                    out[0] = head.fallback
                    continue
                if sent < 0:
                    return
                if sent == 0:
                    self._block()
                    return
                head.sock.close()  # the kernel holds it now, in flight to the container
                self._passing -= 1
                self._out_bytes -= len(head.frame)
                if sent < len(head.frame):
                    out[0] = head.frame[sent:]
                    self._out_bytes += len(head.frame) - sent
                    self._block()
                    return
                del out[0]
                continue
            run = 1
            while run < len(out) and not isinstance(out[run], _Passing):
                run += 1
            chunk: list[bytes] = out[:run]  # type: ignore[assignment] # stopped at a _Passing
            data = chunk[0] if run == 1 else b"".join(chunk)
            sent = self._send(data)
            if sent < 0:
                return
            self._out_bytes -= sent
            if sent < len(data):
                out[:run] = [data[sent:]]
                self._block()
                return
            del out[:run]
        self._drained()

    def _fail(self) -> None:
        """The channel failed: nothing more is written, and queued sockets are closed."""
        self.closed = True
        self._wrote()
        self._out_bytes = 0
        if self._passing:
            for item in self._out:
                if isinstance(item, _Passing):
                    item.sock.close()
            self._passing = 0
        self._out.clear()

    def send(self, message: object) -> bool:
        return self.put(encode_frame(message))

    async def write_loop(self) -> None:
        """Write what ``push`` could not, once the socket drains (until the channel closes)."""
        while not self.closed:
            if not self._blocked:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            try:
                await anyio.wait_writable(self.sock)
            except (OSError, anyio.ClosedResourceError):
                self.closed = True
                return
            self._blocked = False
            self.push()

    # -- reading -----------------------------------------------------------------------

    async def _wait_readable(self) -> None:
        try:
            await anyio.wait_readable(self.sock)
        except (OSError, anyio.ClosedResourceError) as exc:
            raise ChannelClosedError("the channel is closed") from exc

    async def _fill(self) -> bool:
        """Read what the socket holds; True when it had to wait for it."""
        waited = False
        if self._emptied:  # the last read took all there was: a read now would only fail
            self._emptied = False
            await self._wait_readable()
            waited = True
        while True:
            try:
                size = self._frames.read_size(_READ_SIZE)
                data, ancillary, flags, _ = self.sock.recvmsg(size, _ANCILLARY)
            except BlockingIOError:
                await self._wait_readable()
                waited = True
                continue
            except (OSError, anyio.ClosedResourceError) as exc:
                raise ChannelClosedError(f"the channel failed: {exc}") from exc
            if ancillary or flags & _CTRUNC:
                passed = _close_passed_fds(ancillary)
                raise ProtocolError(
                    f"sent ancillary data ({passed} file descriptor(s)); "
                    "the channel carries bytes only"
                )
            if not data:
                if self._frames.pending:  # a truncated frame is a breach, not a clean close
                    raise ProtocolError(
                        f"closed the channel in the middle of a frame "
                        f"({self._frames.pending} bytes of it received)"
                    )
                raise ChannelClosedError("the channel is closed")
            self._emptied = len(data) < size
            self._frames.feed(data)
            return waited

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
        outbox = self._outbox
        share = self._share
        while True:
            spent = False
            outbox.batching += 1
            try:
                message = frames.next()
                if message is not None:
                    share.begin()
                while message is not None:
                    dispatch(message)
                    if share.spent():
                        spent = True
                        break
                    message = frames.next()
            finally:
                outbox.batching -= 1
                outbox.flush()
            if spent:
                await share.end()
            elif await self._fill():
                share.rest()

    def close(self) -> None:
        """Stop writing and close the socket (idempotent)."""
        if self.sock.fileno() < 0:
            return
        self._fail()
        self._wake.set()
        anyio.notify_closing(self.sock)  # wakes a read or write waiting on it
        with contextlib.suppress(OSError):
            self.sock.close()
