"""A view served by a child process of its own, driven synchronously: for tools, tests and
benchmarks that use fusefs without capsule.

Starts ``python -m fusefs FD``, hands it the view over the control socket, collects what
it reports on a reader thread, and on exit stops it and unmounts. It never stats or
opens the mount itself. What the server says of a limit it could not raise is logged as a
warning of the ``fusefs`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, TypeVar, final

from fusefs._control import (
    MAX_DATAGRAM,
    Denied,
    FromServer,
    Mounted,
    Probe,
    ProbeReply,
    Rekey,
    Rekeyed,
    Revoke,
    Revoked,
    Serve,
    Shutdown,
    decode_from_server,
    encode,
)
from fusefs._lifecycle import abort_connection, unmount
from fusefs._spec import ViewSpec

__all__ = ["ServerError", "ServerProcess"]

_log = logging.getLogger("fusefs")

_M = TypeVar("_M", bound=FromServer)
_STOP_WAIT: Final = 5.0


class ServerError(RuntimeError):
    """The server did not start, or did not answer in time; the message says which."""


@final
class ServerProcess:
    """``with ServerProcess(view, mountpoint) as server:`` serves ``view`` at ``mountpoint``."""

    def __init__(self, view: ViewSpec, mountpoint: str, *, timeout: float = 10.0) -> None:
        self.view = view.validate()
        self.mountpoint = os.path.abspath(mountpoint)
        self.timeout = timeout
        self.messages: list[FromServer] = []
        self.mounted: Mounted | None = None
        self._changed = threading.Condition()
        self._seq = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        try:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "fusefs", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._reader = threading.Thread(target=self._read, name="fusefs-control", daemon=True)
        self._reader.start()
        self._sock.send(encode(Serve(view=self.view, mountpoint=self.mountpoint)))
        try:
            self.mounted = self.wait_for(Mounted)
        except BaseException:
            self.close()
            raise
        if self.mounted.notice:  # a limit the server could not raise, and what it means
            _log.warning("%s", self.mounted.notice)

    # -- reporting ------------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except OSError:
                data = b""
            with self._changed:
                if data:
                    self.messages.append(decode_from_server(data))
                else:
                    self.messages.append(Denied("", "", "", "", "server gone"))
                self._changed.notify_all()
            if not data:
                return

    def wait_for(self, kind: type[_M], *, after: int = 0, timeout: float | None = None) -> _M:
        """The first message of ``kind`` from index ``after`` on; ServerError on timeout."""
        return self._wait(kind, lambda _: True, after, timeout)

    def _wait(
        self, kind: type[_M], match: Callable[[_M], bool], after: int, timeout: float | None
    ) -> _M:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._changed:
            while True:
                for message in self.messages[after:]:
                    if isinstance(message, kind) and match(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    code = self.process.poll()
                    state = "running" if code is None else f"exited with {code}"
                    raise ServerError(f"no {kind.__name__} from the fusefs server ({state})")
                self._changed.wait(left)

    @property
    def denials(self) -> list[Denied]:
        with self._changed:
            return [m for m in self.messages if isinstance(m, Denied) and m.operation]

    def allowed(self) -> dict[str, int]:
        """Allowed operations reported so far, summed: ``{"/mount op": count}``."""
        totals: dict[str, int] = {}
        with self._changed:
            for message in self.messages:
                for key, count in getattr(message, "counts", {}).items():
                    totals[key] = totals.get(key, 0) + count
        return totals

    # -- driving --------------------------------------------------------------------------

    def revoke(self, *tokens: str, reason: str = "revoked") -> Revoked:
        """Revoke ``tokens``; returns the server's answer, sent once the kernel's caches of
        the mounts they grant are dropped (no mounts: they were closed already, or none)."""
        after = len(self.messages)
        self._seq += 1
        seq = self._seq
        self._sock.send(encode(Revoke(tokens=tokens, reason=reason, seq=seq)))
        return self._wait(Revoked, lambda answer: answer.seq == seq, after, None)

    def rekey(
        self, tokens: dict[str, str], expires: dict[str, float], info: dict[str, str] | None = None
    ) -> Rekeyed:
        """Move the mounts of ``tokens``' keys to their renewals; the server's answer."""
        after = len(self.messages)
        self._seq += 1
        seq = self._seq
        message = Rekey(seq=seq, tokens=tokens, expires=expires, info=info or {})
        self._sock.send(encode(message))
        return self._wait(Rekeyed, lambda reply: reply.seq == seq, after, None)

    def probe(self, timeout: float) -> bool:
        """Whether a request through the kernel is served within ``timeout`` seconds."""
        after = len(self.messages)
        seq = self._send_probe()
        try:
            self._wait(ProbeReply, lambda reply: reply.seq == seq, after, timeout)
        except ServerError:
            return False  # a late reply to this probe is ignored by the next one
        return True

    def _send_probe(self) -> int:
        self._seq += 1
        self._sock.send(encode(Probe(seq=self._seq)))
        return self._seq

    def abort(self) -> bool:
        """Abort the FUSE connection: waiting and later requests fail instead of hanging."""
        if self.mounted is None or self.mounted.connection is None:
            return False
        return abort_connection(self.mounted.connection)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """Stop the server (SIGKILL after a grace period) and unmount the view."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self._sock.send(encode(Shutdown()))
            try:
                self.process.wait(_STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.abort()
                self.kill()
        unmount(self.mountpoint)
        self._sock.close()
        self._reader.join(_STOP_WAIT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
