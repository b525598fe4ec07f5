"""The zygote: a fresh, single-threaded interpreter that forks one sandboxed child per container.

Started by the supervisor as ``python -I -c ... FD HOST_NS`` (``HOST_NS`` is ``-``, or a
descriptor of the host's mount namespace when the zygote runs in a root of its own, where
the runtime lies at neutral paths: see ``_launcher``). It pre-imports the container
runtime, compiles the seccomp filter once, and then only forks, writes uid maps, reaps,
and reports exits. It holds no secrets (no signing
key, no tokens) and never runs feature code itself. It learns nothing per feature
either: an order to spawn carries only the host uid and gid to map (the request
itself comes on a socket the forked child reads), because every later fork inherits
what the zygote's memory once held. When the supervisor's end of its socket closes,
it kills every container it started and exits.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# What every container needs, imported once here so a fork finds it loaded.
import anyio._backends._trio  # noqa: F401 - pre-import for the containers, with anyio.run's backend
import cloudpickle  # noqa: F401 - pre-import for the containers
import msgspec
import trio  # noqa: F401 - pre-import for the containers

import capsule._container._runtime
import capsule.feature  # noqa: F401 - pre-import for the containers (and what their code refers to)
import fusefs  # noqa: F401 - pre-import for the view servers
from capsule._sandbox import _seccomp, _seccomp_bpf
from capsule._sandbox import _syscalls as sc
from capsule._spawn import _bootstrap, _viewserver
from capsule._spawn._protocol import (
    ORDER_DATAGRAM,
    Exited,
    Spawn,
    Spawned,
    SpawnFailed,
    SpawnView,
    ToZygote,
    ZygoteReady,
)

#: how long a container may take from its fork to its namespaces. It waits on the way for
#: its view to be mounted; a view that fails or times out (the supervisor's own bound)
#: ends it sooner, since its request socket is closed then.
_MAP_TIMEOUT: Final = 30.0
#: how long it waits at exit for what it killed to be gone (under the client's 5 s grace)
_DRAIN: Final = 4.0
_decoder = msgspec.msgpack.Decoder(ToZygote)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class _Unmapped:
    """A container forked and not yet in its namespaces: its order, its pid, the pipe that
    lets it go on once its uid map is written, and when to give up on it."""

    order: Spawn
    pid: int
    go: int
    deadline: float


class _Zygote:
    def __init__(self, sock: socket.socket, host: int | None) -> None:
        self.sock = sock
        self.host = host
        self.children: set[int] = set()
        #: containers forked and not yet in their namespaces, by the pipe each reports on
        self.unmapped: dict[int, _Unmapped] = {}
        available, _ = _seccomp.available()
        self.seccomp = _seccomp_bpf.build_filter() if available else None

    def send(self, message: object, fds: list[int] | None = None) -> None:
        data = _encoder.encode(message)
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)

    def spawn(self, order: Spawn, channel: int, carrier: int) -> None:
        """Fork one container; the child reads its request from ``carrier`` (this process never
        does), waits for its uid map, and builds the sandbox. Its uid map is written once it
        reports that it is in its namespaces (see :meth:`map_user`): meanwhile this process
        serves other orders."""
        go_read, go_write = os.pipe()
        ns_read, ns_write = os.pipe()
        pid = _fork()
        if pid == 0:  # never return into the zygote's code, whatever happens
            try:
                _bootstrap.run_outer(
                    carrier,
                    channel=channel,
                    go=go_read,
                    unshared=ns_write,
                    host=self.host,
                    seccomp_program=self.seccomp,
                )
            finally:
                os._exit(_bootstrap.EXIT_BOOTSTRAP)
        os.close(go_read)
        os.close(ns_write)
        os.close(channel)
        os.close(carrier)
        self.children.add(pid)
        self.unmapped[ns_read] = _Unmapped(order, pid, go_write, time.monotonic() + _MAP_TIMEOUT)

    def map_user(self, ns_read: int, *, expired: bool = False) -> None:
        """Write the uid map of the child that reported on ``ns_read`` (or failed to, by
        closing it or by ``expired``), let it go on, and report it started (or kill it)."""
        child = self.unmapped.pop(ns_read)
        order, pid = child.order, child.pid
        try:
            if expired or os.read(ns_read, 1) != b"u":
                raise OSError("the child did not reach its new namespaces")  # noqa: TRY301 - one cleanup path
            _write_maps(pid, order.uid, order.gid)
            os.write(child.go, b"g")
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if pid in self.children:  # not reaped yet (a zombie can be signalled)
                os.kill(pid, signal.SIGKILL)
            self.send(SpawnFailed(seq=order.seq, error=str(exc)))
            return
        finally:
            os.close(ns_read)
            os.close(child.go)
        try:
            self.send(Spawned(seq=order.seq, pid=pid), [pidfd])
        finally:
            os.close(pidfd)

    def spawn_view(self, order: SpawnView, control: int, carrier: int) -> None:
        """Fork one container's file-system server: no namespaces of its own to wait for;
        the child reads its request from ``carrier`` (this process never does)."""
        pid = _fork()
        if pid == 0:  # never return into the zygote's code, whatever happens
            try:
                _viewserver.run(carrier, control=control, host=self.host)
            finally:
                os._exit(_bootstrap.EXIT_BOOTSTRAP)
        os.close(control)
        os.close(carrier)
        self.children.add(pid)
        seq = order.seq
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)
            self.send(SpawnFailed(seq=seq, error=str(exc)))
            return
        try:
            self.send(Spawned(seq=seq, pid=pid), [pidfd])
        finally:
            os.close(pidfd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                self.send(Exited(pid=pid, status=status))

    def kill_all(self) -> None:
        """Kill every process it started and wait until none is left, reparented ones (a
        container's inner process, orphaned when its outer one died) included: a process
        left to the host's init would outlive the supervisor's close until init reaps it."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):  # ended already: nothing to kill
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _DRAIN
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # none left: everything it started is gone and reaped
            if pid:
                continue
            if time.monotonic() > deadline:
                left = _children()
                sys.stderr.write(f"capsule zygote: processes still ending at exit: {left}\n")
                return
            for child in _children():  # a subreaper's orphans are its children too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            time.sleep(0.002)

    def serve(self) -> None:
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.send(ZygoteReady(pid=os.getpid()))
        try:
            while True:
                timeout = None
                if self.unmapped:
                    soonest = min(child.deadline for child in self.unmapped.values())
                    timeout = max(0.0, soonest - time.monotonic())
                waiting = list(self.unmapped)
                ready, _, _ = select.select(
                    [self.sock.fileno(), wake_read, *waiting], [], [], timeout
                )
                now = time.monotonic()
                for ns_read in waiting:
                    if ns_read in ready:
                        self.map_user(ns_read)
                    elif self.unmapped[ns_read].deadline <= now:
                        self.map_user(ns_read, expired=True)
                if wake_read in ready:
                    while True:
                        try:
                            if not os.read(wake_read, 512):
                                break
                        except BlockingIOError:
                            break
                    self.reap()
                if self.sock.fileno() in ready and not self._handle_request():
                    return
        except (ConnectionResetError, BrokenPipeError):
            return  # the supervisor went away with reports unread: the same as a close
        finally:
            self.kill_all()

    def _handle_request(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.sock, ORDER_DATAGRAM, 4)
        if not data:
            return False
        message = _decoder.decode(data)
        if isinstance(message, Spawn) and len(fds) == 2:  # its channel, its request
            self.spawn(message, fds[0], fds[1])
        elif isinstance(message, SpawnView) and len(fds) == 2:  # its control socket, its request
            self.spawn_view(message, fds[0], fds[1])
        else:
            for fd in fds:
                os.close(fd)
            raise SystemExit(f"capsule zygote: malformed request {message!r}")
        return True


def _fork() -> int:
    """``os.fork()``, every object this process holds frozen first (``gc.freeze``): the
    child's collector never walks them, so never writes to the pages it shares with this
    process, which stay shared (a full collection in a child would copy nearly all of them)."""
    gc.freeze()
    return os.fork()


def _children() -> list[int]:
    """This process's children, adopted orphans included (from /proc)."""
    found: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            found += [int(pid) for pid in (task / "children").read_text("ascii").split()]
    return found


def _write_maps(pid: int, uid: int, gid: int) -> None:
    with open(f"/proc/{pid}/setgroups", "w", encoding="ascii") as f:
        f.write("deny")
    with open(f"/proc/{pid}/gid_map", "w", encoding="ascii") as f:
        f.write(f"0 {gid} 1\n")
    with open(f"/proc/{pid}/uid_map", "w", encoding="ascii") as f:
        f.write(f"0 {uid} 1\n")


def main(argv: list[str]) -> None:
    fd, host = int(argv[1]), argv[2]
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    sock = socket.socket(fileno=fd)
    _Zygote(sock, None if host == "-" else int(host)).serve()


if __name__ == "__main__":
    main(sys.argv)
