"""The supervisor's side of the zygote: start it, ask it for containers, hear about their exits.

Async (anyio), for the supervisor's event loop. It starts the zygote as a freshly
executed interpreter, so the host program's threads never matter; it never forks
the supervisor itself. When it can (as root, with overlayfs), it starts it through
``_launcher``, in a root of its own where the runtime lies at neutral paths; each request
then carries the runtime's host directories (to the forked child, never the zygote).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import msgspec

import capsule
import fusefs
from capsule._environ import minimal
from capsule._spawn import _launcher
from capsule._spawn._layout import (
    NEUTRAL_ROOT,
    RuntimeLayout,
    neutral_support,
    plan_runtime,
    rewrite_build_data,
)
from capsule._spawn._protocol import (
    MAX_DATAGRAM,
    VIEW_MOUNTED,
    Exited,
    FromZygote,
    RootSources,
    Spawn,
    Spawned,
    SpawnFailed,
    SpawnRequest,
    SpawnView,
    ViewRequest,
    ZygoteReady,
)
from capsule.errors import SandboxError

__all__ = ["RootHandover", "SpawnResult", "ZygoteClient"]

_START_TIMEOUT: Final = 30.0
_EXIT_GRACE: Final = 5.0
_decoder = msgspec.msgpack.Decoder(FromZygote)
_encoder = msgspec.msgpack.Encoder()

#: the launcher needs a few modules of the package, not its facade (which imports the whole
#: runtime, a fifth of a second) and executes the zygote right after: the package is
#: registered bare, so that only what the launcher imports is loaded
_LAUNCHER: Final = (
    "import sys, types; sys.path[:0] = [sys.argv[1]]; "
    "package = types.ModuleType('capsule'); package.__path__ = [sys.argv[1] + '/capsule']; "
    "sys.modules['capsule'] = package; "
    "from capsule._spawn._launcher import main; main(sys.argv[2:])"
)
_layouts: dict[bool, RuntimeLayout] = {}


def runtime_layout() -> RuntimeLayout:
    """This interpreter's runtime, and where the zygote and its containers see it (computed
    once: the runtime does not move while the program runs)."""
    neutral, reason = neutral_support()
    if neutral not in _layouts:
        packages = [os.path.dirname(capsule.__file__), os.path.dirname(fusefs.__file__)]
        _layouts[neutral] = plan_runtime(packages, neutral=neutral, reason=reason)
    return _layouts[neutral]


@dataclass(slots=True)
class SpawnResult:
    """A started container: the pid of its outer process and a pidfd for signalling it."""

    pid: int
    pidfd: int


@dataclass(slots=True)
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
    result: SpawnResult | None = None
    error: str | None = None


@dataclass(slots=True)
class _Exit:
    done: anyio.Event = field(default_factory=anyio.Event)
    status: int | None = None


def _queue(sock: socket.socket, messages: Sequence[msgspec.Struct], what: str) -> None:
    """Send ``messages`` on ``sock``, a datagram each, for the reader of the other end of its
    socketpair."""
    for message in messages:
        data = _encoder.encode(message)
        try:
            sock.send(data)
        except OSError as exc:
            raise SandboxError(
                f"could not hand over the request for {what} ({len(data)} bytes): {exc}"
            ) from exc


def _carrying(messages: Sequence[msgspec.Struct], what: str) -> socket.socket:
    """One end of a new socketpair with ``messages`` queued on it, a datagram each (the other
    end is closed: the reader sees them, then the end of the stream)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        try:
            _queue(ours, messages, what)
        except BaseException:
            theirs.close()
            raise
    return theirs


def _kill(pidfd: int) -> None:
    """SIGKILL the process behind ``pidfd`` (the zygote reaps it), unless it has ended."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return  # it has ended already


class RootHandover:
    """A container's request socket, prepared by :meth:`ZygoteClient.prepare`: the
    supervisor's end holds back the sources of its root (host paths) until :meth:`send`,
    once its view is mounted. The outer process waits for that in its cgroup, then copies
    the host's mount namespace (the view's mount in it) and builds the root from the
    sources. Withdrawn unsent, it ends (it reads the end of the stream, says so and
    exits)."""

    def __init__(
        self, sock: socket.socket, carrier: socket.socket, sources: bytes, order: Spawn, name: str
    ) -> None:
        self._sock = sock
        self._carrier: socket.socket | None = carrier
        self._sources = sources
        self.order = order
        self.name = name

    def carrier(self) -> socket.socket:
        """The end the outer process reads from (taken once, to be passed to the zygote)."""
        carrier, self._carrier = self._carrier, None
        if carrier is None:
            raise RuntimeError(f"the request of the container for {self.name} was taken already")
        return carrier

    def send(self) -> None:
        """Say the view is mounted, send the sources (what they name must exist now) and
        close the socket."""
        try:
            self._sock.send(VIEW_MOUNTED)
            self._sock.send(self._sources)
        except OSError as exc:
            raise SandboxError(
                f"could not hand over the root's sources for the container for {self.name} "
                f"({len(self._sources)} bytes): {exc}"
            ) from exc
        finally:
            self.withdraw()

    def withdraw(self) -> None:
        """Close the supervisor's end, unless sent already: the container will not start
        (idempotent)."""
        self._sock.close()

    def close(self) -> None:
        """Withdraw, and close the outer process's end if it was not taken (idempotent)."""
        self.withdraw()
        if self._carrier is not None:
            self._carrier.close()
            self._carrier = None


class ZygoteClient:
    """One zygote process. Use ``async with ZygoteClient.open(stage) as zygote``."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        sock: socket.socket,
        layout: RuntimeLayout,
        stage: Path,
    ) -> None:
        self._process = process
        self._sock = sock
        self.layout = layout
        self._stage = stage
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._abandoned: set[int] = set()  # starts cancelled before the zygote answered
        self._exits: dict[int, _Exit] = {}
        self._closed = False
        self.ready: ZygoteReady | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    def launch(cls, stage: Path, build_data: Path | None = None) -> ZygoteClient:
        """Start the zygote process (synchronous: a fork+exec, before any container exists).

        Its environment is built from scratch (``capsule._environ``): nothing of the host
        program's environment reaches it, nor anything it forks. In the neutral layout it
        is started by ``_launcher``, in a root of its own mounted on ``stage`` (in a mount
        namespace of its own: the host sees nothing mounted there), and the interpreter's
        build data, rewritten to name where it is shown, is written beneath ``build_data``
        (when given) and laid over it.
        """
        layout = runtime_layout()
        if build_data is not None:
            layout = rewrite_build_data(layout, str(build_data))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = str(theirs.fileno())
        if layout.mode == "neutral":
            source_root = os.path.dirname(os.path.dirname(capsule.__file__))
            plan = msgspec.json.encode(layout).decode()
            command = [sys.executable, "-I", "-c", _LAUNCHER, source_root, plan, str(stage), fd]
        else:
            command = [sys.executable, "-I", "-c", _launcher.ZYGOTE, fd, "-", *layout.path]
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed argv
                command,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
                env=minimal(),  # never the host's: every container and view server inherits it
            )
        except OSError as exc:
            ours.close()
            raise SandboxError(f"could not start the zygote ({sys.executable}): {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)  # noqa: FBT003 - the socket API's own positional flag
        return cls(process, ours, layout, stage)

    async def _receive(self) -> tuple[FromZygote, list[int]] | None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, MAX_DATAGRAM, 2)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._sock)
                except anyio.ClosedResourceError:
                    return None
                continue
            except OSError:
                return None
            if not data:
                return None
            return _decoder.decode(data), fds

    async def wait_started(self) -> ZygoteReady:
        with anyio.fail_after(_START_TIMEOUT):
            received = await self._receive()
        if received is None or not isinstance(received[0], ZygoteReady):
            wait = functools.partial(self._process.wait, timeout=_EXIT_GRACE)
            try:  # its status, once it is gone
                code: int | None = await anyio.to_thread.run_sync(wait)
            except subprocess.TimeoutExpired:
                code = None
            where = (
                " (in a root of its own, with the runtime beneath "
                f"{NEUTRAL_ROOT}: its error is on standard error)"
                if self.layout.mode == "neutral"
                else ""
            )
            raise SandboxError(
                f"the zygote exited during start (exit status {code}){where}; run with "
                "--debug, and check `capsule doctor`"
            )
        self.ready = received[0]
        return self.ready

    async def serve(self) -> None:
        """Dispatch the zygote's replies and exit reports until it goes away."""
        try:
            while True:
                received = await self._receive()
                if received is None:
                    return
                message, fds = received
                if isinstance(message, Spawned):
                    pending = self._pending.pop(message.seq, None)
                    if pending is None or not fds:
                        if fds and message.seq in self._abandoned:
                            _kill(fds[0])  # its start was cancelled: nobody owns it
                        self._abandoned.discard(message.seq)
                        for fd in fds:
                            os.close(fd)
                        continue
                    pending.result = SpawnResult(message.pid, fds[0])
                    pending.done.set()
                elif isinstance(message, SpawnFailed):
                    failed = self._pending.pop(message.seq, None)
                    self._abandoned.discard(message.seq)
                    if failed is not None:
                        failed.error = message.error
                        failed.done.set()
                elif isinstance(message, Exited):
                    record = self._exits.setdefault(message.pid, _Exit())
                    record.status = message.status
                    record.done.set()
        finally:
            self._closed = True
            for pending in self._pending.values():
                pending.error = "the zygote exited"
                pending.done.set()
            for record in self._exits.values():
                record.done.set()

    def prepare(self, request: SpawnRequest) -> RootHandover:
        """One container's request, queued for its outer process, and its root's sources,
        held back: :meth:`spawn` it, then :meth:`RootHandover.send` once its view is
        mounted (the outer process waits for that in its cgroup, before its namespaces)."""
        order = Spawn(seq=0, uid=request.uid, gid=request.gid)
        view = request.view
        binds = (*self.layout.binds, *view.binds)
        sources = RootSources(
            stage=str(self._stage), binds=tuple((b.source, *b.layers) for b in binds)
        )
        blank = tuple(msgspec.structs.replace(b, source="", layers=()) for b in binds)
        request = msgspec.structs.replace(
            request,
            view=msgspec.structs.replace(
                view, binds=blank, symlinks=(*self.layout.symlinks, *view.symlinks)
            ),
        )
        what = f"the container for {request.name}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            _queue(ours, [request], what)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return RootHandover(ours, theirs, _encoder.encode(sources), order, request.name)

    async def spawn(self, prepared: RootHandover, channel: socket.socket) -> SpawnResult:
        """Start the container ``prepared``; ``channel`` is its end of the socketpair (closed
        here). Returns once it is in its namespaces: after ``prepared`` was sent."""
        carrier = prepared.carrier()
        return await self._spawn(prepared.order, carrier, prepared.name, channel, "container")

    async def spawn_view(self, request: ViewRequest, control: socket.socket) -> SpawnResult:
        """Start one file-system server; ``control`` is its end of the socketpair (closed here)."""
        runtime = tuple((bind.target, bind.source) for bind in self.layout.binds)
        request = msgspec.structs.replace(request, runtime=runtime)
        what = f"the file-system server for {request.name}"
        try:
            carrier = _carrying([request], what)
        except BaseException:
            control.close()
            raise
        return await self._spawn(
            SpawnView(seq=0), carrier, request.name, control, "file-system server"
        )

    async def _spawn(
        self,
        order: Spawn | SpawnView,
        carrier: socket.socket,
        name: str,
        channel: socket.socket,
        what: str,
    ) -> SpawnResult:
        """Send ``order`` (which names no feature) to the zygote with ``channel`` and
        ``carrier``, the socket the child reads its request from (only the forked child
        reads it, never the zygote); both are closed here."""
        try:
            if self._closed:
                raise SandboxError("the zygote is not running")  # noqa: TRY301 - closes below
        except BaseException:
            channel.close()
            carrier.close()
            raise
        self._seq += 1
        pending = _Pending()
        self._pending[self._seq] = pending
        data = _encoder.encode(msgspec.structs.replace(order, seq=self._seq))
        try:
            while True:
                try:
                    socket.send_fds(self._sock, [data], [channel.fileno(), carrier.fileno()])
                    break
                except BlockingIOError:
                    await anyio.wait_writable(self._sock)
        except OSError as exc:
            self._pending.pop(self._seq, None)
            raise SandboxError(f"the zygote is gone: {exc}") from exc
        finally:
            channel.close()
            carrier.close()
        seq = self._seq
        try:
            await pending.done.wait()
        except BaseException:  # cancelled: what it started must not outlive the start
            if self._pending.pop(seq, None) is not None:
                self._abandoned.add(seq)  # killed by serve() once the zygote reports it
            elif pending.result is not None:
                _kill(pending.result.pidfd)
                os.close(pending.result.pidfd)
            raise
        if pending.result is None:
            raise SandboxError(f"could not start the {what} for {name}: {pending.error}")
        self._exits.setdefault(pending.result.pid, _Exit())
        return pending.result

    async def wait_exit(self, pid: int) -> int | None:
        """The raw wait status of a container's outer process (None if the zygote died)."""
        record = self._exits.setdefault(pid, _Exit())
        await record.done.wait()
        self._exits.pop(pid, None)
        return record.status

    async def aclose(self) -> None:
        """Close the link: the zygote kills what it started and exits; reap it."""
        anyio.notify_closing(self._sock)
        self._sock.close()
        process = self._process
        try:
            await anyio.to_thread.run_sync(functools.partial(process.wait, timeout=_EXIT_GRACE))
        except subprocess.TimeoutExpired:
            process.kill()
            await anyio.to_thread.run_sync(process.wait)
