"""One container's file-system server as the supervisor sees it: start, watch, revoke, stop.

Async (anyio). The supervisor never touches a container's mount from its event loop:
liveness is the server's own probe (a lookup through the kernel from its worker
thread, answered on the control socket), a hung server is aborted through
/sys/fs/fuse/connections and killed through its pidfd, and unmounting is a lazy
detach in a worker thread. What the server denied and allowed goes to the audit log.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import anyio
import anyio.abc
import msgspec
import structlog

import fusefs
from capsule._broker._audit import AuditLog
from capsule._spawn._client import ZygoteClient
from capsule._spawn._protocol import ROOTS_DATAGRAM, ROOTS_PER_DATAGRAM, ViewRequest
from capsule.errors import SandboxError

__all__ = ["VIEW_SERVER_PIDS", "ViewServer", "ViewTimeouts"]

_log = structlog.get_logger("capsule.supervisor")
_MAX_DATAGRAM: Final = 1 << 20
_STOP_GRACE: Final = 2.0
#: the threads a view server keeps while it serves (its main thread and the worker of its
#: probes). It joins its container's cgroup, whose pids limit is the feature's own plus
#: these; further worker threads (an fsync, a revocation) take from the feature's share.
VIEW_SERVER_PIDS: Final = 2


@final
@dataclass(frozen=True, slots=True)
class ViewTimeouts:
    """Seconds a file-system server may take to mount a view (``mount``), how often it is
    probed (``probe_interval``), how long a probe may take before the server is aborted and
    its container ended (``probe``), and how long it may take to confirm a revocation
    before the same happens (``revoke``). ``open_supervisor(view_timeouts=...)``."""

    mount: float = 10.0
    probe_interval: float = 2.0
    probe: float = 5.0
    #: how long a server may take to drop the kernel's caches of revoked mounts before the
    #: container is ended instead (it grows with the files the view has served)
    revoke: float = 30.0


class ViewServer:
    """A started file-system server for one container. Built by :meth:`launch`."""

    def __init__(
        self,
        feature: str,
        mountpoint: Path,
        sock: socket.socket,
        pid: int,
        pidfd: int,
        *,
        zygote: ZygoteClient,
        audit: AuditLog,
        timeouts: ViewTimeouts,
    ) -> None:
        self.feature = feature
        self.mountpoint = mountpoint
        self.pid = pid
        self._sock = sock
        self._pidfd = pidfd
        self._zygote = zygote
        self._audit = audit
        self.timeouts = timeouts
        self.mounted: fusefs.Mounted | None = None
        self.exited = anyio.Event()
        self.status: int | None = None
        self.failure: str | None = None
        self._stopping = False
        self._stopped = anyio.Event()
        self._serving = False
        #: set while its container's cgroup is frozen, which freezes the server too: it cannot
        #: answer probes then, and is not hung
        self.probes_held = False
        self._probe_seq = 0
        self._probe_answered = 0
        self._answered = anyio.Event()
        self._rekeys: dict[int, fusefs.Rekeyed] = {}
        self._rekeyed = anyio.Event()  # set (and replaced) when a Rekeyed arrives
        self._revoke_seq = 0
        self._revoked: dict[int, fusefs.Revoked] = {}  # answers to revocations, by seq
        self._revoke_answered = anyio.Event()
        self.denied = 0
        self.allowed = 0

    @classmethod
    async def launch(
        cls,
        feature: str,
        view: fusefs.ViewSpec,
        mountpoint: Path,
        *,
        zygote: ZygoteClient,
        audit: AuditLog,
        landlock: bool,
        timeouts: ViewTimeouts,
        cgroup_procs: tuple[str, ...] = (),
        roots: Mapping[int, int] | None = None,
    ) -> ViewServer:
        """Fork the server from the zygote and wait until the view is mounted; it joins
        ``cgroup_procs`` first (its container's group: memory, pids, cpu). ``roots`` are the
        directories behind mounts, by mount index (descriptors the caller keeps): the server
        is handed them on its own socket, never through the zygote, and serves those."""
        roots = dict(roots or {})
        os.mkdir(mountpoint, mode=0o700)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)  # noqa: FBT003 - the socket API's own positional flag
        request = ViewRequest(
            name=feature,
            view=msgspec.msgpack.encode(view),
            mountpoint=str(mountpoint),
            landlock=landlock,
            cgroup_procs=cgroup_procs,
            roots=tuple(roots),
        )
        try:
            spawned = await zygote.spawn_view(request, theirs)
        except BaseException:
            ours.close()
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)
            raise
        server = cls(
            feature,
            mountpoint,
            ours,
            spawned.pid,
            spawned.pidfd,
            zygote=zygote,
            audit=audit,
            timeouts=timeouts,
        )
        try:
            with anyio.fail_after(timeouts.mount):
                await _send_roots(ours, list(roots.values()))
                await server._until_mounted()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await server.stop()
            if isinstance(exc, TimeoutError):
                raise SandboxError(
                    f"the file-system server of {feature} did not mount its view within "
                    f"{timeouts.mount:g}s"
                ) from None
            raise
        return server

    # -- messages ----------------------------------------------------------------------

    async def _receive(self) -> fusefs.FromServer | None:
        while True:
            try:
                data = self._sock.recv(_MAX_DATAGRAM)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._sock)
                except (anyio.ClosedResourceError, OSError):
                    return None
                continue
            except OSError:
                return None
            if not data:
                return None
            return fusefs.decode_from_server(data)

    async def _until_mounted(self) -> None:
        while self.mounted is None:
            message = await self._receive()
            if message is None:
                status = await self._zygote.wait_exit(self.pid)
                self._exited(status)
                raise SandboxError(
                    f"the file-system server of {self.feature} ended before mounting its view "
                    f"(wait status {status}); see its error above"
                )
            self._handle(message)

    def _handle(self, message: fusefs.FromServer) -> None:
        feature = self.feature
        if isinstance(message, fusefs.Mounted):
            self.mounted = message
            if message.notice:  # a limit the server could not raise, and what that means
                _log.warning("file-system server limit", feature=feature, notice=message.notice)
        elif isinstance(message, fusefs.Denied):
            self.denied += max(1, message.suppressed)
            if message.suppressed:
                self._audit.record(
                    "fs-deny-suppressed",
                    feature=feature,
                    decision="deny",
                    reason=message.reason,
                    count=message.suppressed,
                )
                return
            self._audit.record(
                "fs-deny",
                feature=feature,
                decision="deny",
                reason=message.reason,
                token=message.token,
                capability=message.capability or None,
                operation=message.operation,
                path=message.path,
                mount=message.mount,
            )
        elif isinstance(message, fusefs.Allowed):
            for key, count in message.counts.items():
                mount, _, operation = key.rpartition(" ")
                self.allowed += count
                self._audit.record(
                    "fs-allow",
                    feature=feature,
                    decision="allow",
                    mount=mount,
                    operation=operation,
                    count=count,
                )
        elif isinstance(message, fusefs.Revoked):
            if message.seq:
                self._revoked[message.seq] = message
                self._revoke_answered.set()
            if not message.mounts:
                return
            self._audit.record(
                "fs-revoke",
                feature=feature,
                decision="revoke",
                reason=f"file access through {', '.join(message.mounts) or 'no mount'} ended: "
                f"token {message.reason}",
                revoked=list(message.tokens),
                mounts=list(message.mounts),
            )
        elif isinstance(message, fusefs.Rekeyed):
            self._rekeys[message.seq] = message
            arrived, self._rekeyed = self._rekeyed, anyio.Event()
            arrived.set()
        elif isinstance(message, fusefs.ProbeReply):
            self._probe_answered = max(self._probe_answered, message.seq)
            self._answered.set()

    # -- serving -----------------------------------------------------------------------

    async def serve(self, on_failure: Callable[[str], None]) -> None:
        """Read reports and probe the server until it ends; a server that ends on its own or
        stops answering is aborted and killed, and ``on_failure(reason)`` is called once."""
        self._serving = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_exit, tg.cancel_scope)
            tg.start_soon(self._read)
            tg.start_soon(self._probe_loop)
        self._drain()
        if not self._stopping and self.failure is None:
            self.failure = f"its file-system server ended ({_describe(self.status)})"
        if not self._stopping and self.failure is not None:
            _log.error("file-system server failed", feature=self.feature, reason=self.failure)
            self._audit.record("fs-end", feature=self.feature, decision="end", reason=self.failure)
            on_failure(self.failure)

    async def _watch_exit(self, scope: anyio.CancelScope) -> None:
        status = await self._zygote.wait_exit(self.pid)
        self._exited(status)
        scope.cancel()

    def _exited(self, status: int | None) -> None:
        if self.exited.is_set():
            return
        self.status = status
        self._revoke_answered.set()  # a revocation waiting on it is answered no more
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self.exited.set()

    def _drain(self) -> None:
        """Handle what the server said before it ended (its last counts, say)."""
        while True:
            try:
                data = self._sock.recv(_MAX_DATAGRAM)
            except OSError:
                return
            if not data:
                return
            self._handle(fusefs.decode_from_server(data))

    async def _read(self) -> None:
        while True:
            message = await self._receive()
            if message is None:
                return
            self._handle(message)
            if isinstance(message, fusefs.Revoked) and message.failed and not message.seq:
                self.failure = (  # an expiry whose caches stayed: nothing else can end them
                    f"its file-system server could not drop {message.failed} kernel cache "
                    "entries of expired mounts (aborted and killed)"
                )
                await self.abort()
                return

    async def _probe_loop(self) -> None:
        while True:
            await anyio.sleep(self.timeouts.probe_interval)
            if self._stopping:
                return
            if self.probes_held:
                continue
            if not await self.probe(self.timeouts.probe) and not self.probes_held:
                self.failure = (
                    f"its file-system server did not answer within {self.timeouts.probe:g}s "
                    "(aborted and killed)"
                )
                await self.abort()
                return

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109 - a probe is its deadline
        """Whether a request through the kernel is served within ``timeout`` seconds."""
        self._probe_seq += 1
        seq = self._probe_seq
        self._send(fusefs.Probe(seq=seq))
        with anyio.move_on_after(timeout):
            while self._probe_answered < seq:
                self._answered = anyio.Event()
                await self._answered.wait()
        return self._probe_answered >= seq

    async def rekey(
        self,
        tokens: dict[str, str],
        expires: dict[str, float],
        info: dict[str, str],
        timeout: float,  # noqa: ASYNC109 - the answer is awaited within it
    ) -> fusefs.Rekeyed | None:
        """Move the mounts granted by ``tokens``' keys to their renewals (open files stay
        open); the server's answer, or None without one within ``timeout`` seconds."""
        if self.exited.is_set():
            return None
        self._probe_seq += 1
        seq = self._probe_seq
        self._send(fusefs.Rekey(seq=seq, tokens=tokens, expires=expires, info=info))
        with anyio.move_on_after(timeout):
            while seq not in self._rekeys:
                await self._rekeyed.wait()
        return self._rekeys.pop(seq, None)

    def _send(self, message: fusefs.Revoke | fusefs.Probe | fusefs.Shutdown | fusefs.Rekey) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(fusefs.encode(message))

    async def revoke(self, tokens: frozenset[str] | set[str], reason: str = "revoked") -> bool:
        """Close the mounts these tokens grant. Returns True once the server has refused
        them and dropped every kernel cache of them, so that no operation through them can
        succeed; False if it did not confirm that within ``timeouts.revoke`` (it is then
        aborted, killed and waited for, and the caller must end the container)."""
        if not tokens:
            return True
        if self.exited.is_set():
            return False
        self._revoke_seq += 1
        seq = self._revoke_seq
        self._send(fusefs.Revoke(tokens=tuple(sorted(tokens)), reason=reason, seq=seq))
        with anyio.move_on_after(self.timeouts.revoke):
            while seq not in self._revoked and not self.exited.is_set():
                if self._serving:  # serve() reads the socket
                    self._revoke_answered = anyio.Event()
                    await self._revoke_answered.wait()
                    continue
                message = await self._receive()
                if message is None:
                    break
                self._handle(message)
        answer = self._revoked.pop(seq, None)
        if answer is not None and not answer.failed:
            return True
        self.failure = (
            f"its file-system server did not confirm revoking {', '.join(sorted(tokens))} "
            f"within {self.timeouts.revoke:g}s"
            if answer is None
            else f"its file-system server could not drop {answer.failed} kernel cache entries "
            "of revoked mounts"
        )
        _log.error("revocation not confirmed", feature=self.feature, reason=self.failure)
        await self.abort()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_GRACE):
            await self._wait_exit()  # gone, not only signalled, when the caller goes on
        return False

    # -- ending ------------------------------------------------------------------------

    async def abort(self) -> None:
        """Fail every request waiting on the view (so its clients never hang) and kill it."""
        mounted = self.mounted
        if mounted is not None and mounted.connection is not None:
            await anyio.to_thread.run_sync(
                fusefs.abort_connection, mounted.connection, abandon_on_cancel=True
            )
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop the server (abort and SIGKILL after a grace period), unmount, remove the
        mount point. Call after the container using the view has ended."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        with anyio.CancelScope(shield=True):
            await self._stop()
            self._stopped.set()

    async def _stop(self) -> None:
        if not self.exited.is_set():
            self._send(fusefs.Shutdown())
            with anyio.move_on_after(_STOP_GRACE):
                await self._wait_exit()
            if not self.exited.is_set():
                _log.warning("file-system server ignored stop", feature=self.feature)
                await self.abort()
                with anyio.move_on_after(_STOP_GRACE):
                    await self._wait_exit()
        unmount = functools.partial(fusefs.unmount, str(self.mountpoint))
        await anyio.to_thread.run_sync(unmount, abandon_on_cancel=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.mountpoint)
        self._sock.close()

    async def _wait_exit(self) -> None:
        """Wait for the exit; the zygote reports it to one waiter only, so while
        :meth:`serve` runs, its watcher is that waiter."""
        if self.exited.is_set():
            return
        if self._serving:
            await self.exited.wait()
        else:
            self._exited(await self._zygote.wait_exit(self.pid))


async def _send_roots(sock: socket.socket, fds: list[int]) -> None:
    """Hand the server its mounts' directories, a batch of descriptors a datagram. A server
    gone already is reported by the wait for its mount that follows."""
    for start in range(0, len(fds), ROOTS_PER_DATAGRAM):
        batch = fds[start : start + ROOTS_PER_DATAGRAM]
        while True:
            try:
                socket.send_fds(sock, [ROOTS_DATAGRAM], batch)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                continue
            except OSError:
                return
            break


def _describe(status: int | None) -> str:
    if status is None:
        return "lost track of it"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    return f"killed by {signal.Signals(-code).name}"
