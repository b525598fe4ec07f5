"""The view's policy: who may call, which mount allows what, revocation and expiry; and
the audit of what it decided.

Decides and counts only: no file-system calls. Every denial is reported (rate-limited)
through ``report``; allowed operations are counted and reported by ``flush()``.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import pyfuse3

from fusefs._control import Allowed, Denied, FromServer
from fusefs._spec import MountSpec, ViewSpec

__all__ = ["DENIALS_PER_SECOND", "EXPIRY_LEAD", "MountState", "ViewPolicy", "Where", "link_escapes"]

#: a path in the view, or a callable that makes one when a denial needs it
Where = str | Callable[[], str]

#: denials sent in full per second; the rest are summarised by the next flush.
DENIALS_PER_SECOND: Final = 100
#: seconds before its token's expiry that a mount closes, so that the kernel's caches of it
#: are dropped (see fusefs._revocation) by the time the token is dead; a grant lasting
#: less than ten times this closes a tenth of its lifetime early instead
EXPIRY_LEAD: Final = 1.0


@dataclass(slots=True)
class MountState:
    """One mount's live grant: open until revoked or expired."""

    index: int
    spec: MountSpec
    closed: str | None = None  # why the grant ended, once it has
    dev: int | None = None  # the backing file system; None where it may vary (cow)
    usage_bytes: int = 0
    usage_inodes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    granted: float = 0.0  # when the server got the grant (Unix time): set by the policy

    @property
    def status(self) -> str:
        return "open" if self.closed is None else self.closed

    def closes_at(self) -> float | None:
        """When the grant closes (Unix time): EXPIRY_LEAD before its token expires, or a
        tenth of its lifetime before if that is shorter; None if it never expires."""
        expires = self.spec.expires
        if expires is None:
            return None
        return expires - min(EXPIRY_LEAD, max(0.0, expires - self.granted) / 10)


class ViewPolicy:
    """Checks every operation of one view against its grants and its container."""

    def __init__(
        self,
        view: ViewSpec,
        report: Callable[[FromServer], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.view = view
        self.mounts = [MountState(i, m, granted=clock()) for i, m in enumerate(view.mounts)]
        self.callers = frozenset({view.uid, *view.callers})
        self._report = report
        self._clock = clock
        self._window = (0, 0)  # (second, denials sent in it)
        self._suppressed = 0

    # -- decisions ---------------------------------------------------------------------

    def caller(self, uid: int, operation: str, path: Where, mount: MountState | None) -> None:
        """Refuse a process that is not this view's container (EACCES, audited)."""
        if uid not in self.callers:
            self.deny(operation, path, mount, f"uid {uid} is not this view's container", uid=uid)

    def check(
        self, mount: MountState, operation: str, path: Where, *, write: bool, uid: int | None = None
    ) -> None:
        """Allow ``operation`` on ``mount`` or raise FUSEError after auditing the denial.

        ``path`` is the path in the view, or a callable that makes it (only denials need it).
        """
        if mount.closed is not None:
            self.deny(operation, path, mount, f"token {mount.closed}", uid=uid)
        if self.expiring(mount, self._clock()):  # closed by expired() with its caches
            self.deny(operation, path, mount, "token expired", uid=uid)
        if write and not mount.spec.writable:
            self.deny(
                operation,
                path,
                mount,
                "read-only mount: the write capability is missing",
                code=errno.EROFS,
                capability=f"fs:write:{mount.spec.view_path}/",
                uid=uid,
            )
        mount.counts[operation] = mount.counts.get(operation, 0) + 1

    def deny(
        self,
        operation: str,
        path: Where,
        mount: MountState | None,
        reason: str,
        *,
        code: int = errno.EACCES,
        capability: str | None = None,
        uid: int | None = None,
    ) -> None:
        """Audit a refusal and raise it as the errno the caller sees."""
        second = math.floor(self._clock())
        start, sent = self._window
        if start != second:
            start, sent = second, 0
        if sent < DENIALS_PER_SECOND:
            self._window = (start, sent + 1)
            spec = None if mount is None else mount.spec
            self._report(
                Denied(
                    operation=operation,
                    path=path if isinstance(path, str) else path(),
                    mount="" if spec is None else spec.view_path,
                    capability=capability or ("" if spec is None else spec.grant),
                    reason=reason,
                    token=None if spec is None else spec.token,
                    uid=uid,
                )
            )
        else:
            self._suppressed += 1
        raise pyfuse3.FUSEError(code)

    # -- changes -----------------------------------------------------------------------

    def revoke(self, tokens: set[str], reason: str) -> list[MountState]:
        """Close the mounts these tokens grant; returns the ones closed now."""
        closed = []
        for mount in self.mounts:
            if mount.closed is None and mount.spec.token in tokens:
                mount.closed = reason
                closed.append(mount)
        return closed

    @staticmethod
    def expiring(mount: MountState, now: float) -> bool:
        """Whether the grant is due to close (see MountState.closes_at), or past it."""
        closes = mount.closes_at()
        return closes is not None and now >= closes

    def expired(self) -> list[MountState]:
        """Close the mounts whose grant is due to close (see MountState.closes_at); returns
        the ones closed now."""
        now = self._clock()
        closed = []
        for mount in self.mounts:
            if mount.closed is None and self.expiring(mount, now):
                mount.closed = "expired"
                closed.append(mount)
        return closed

    def next_expiry(self) -> float | None:
        """When :meth:`expired` next closes a mount (Unix time), if ever."""
        times = [m.closes_at() for m in self.mounts if m.closed is None]
        return min((t for t in times if t is not None), default=None)

    def flush(self) -> None:
        """Report the allowed operations counted since the last flush, and suppressed denials."""
        counts = {}
        for mount in self.mounts:
            for operation, count in mount.counts.items():
                counts[f"{mount.spec.view_path} {operation}"] = count
            mount.counts.clear()
        if counts:
            self._report(Allowed(counts=counts))
        if self._suppressed:
            suppressed, self._suppressed = self._suppressed, 0
            self._report(
                Denied(
                    operation="*",
                    path="",
                    mount="",
                    capability="",
                    reason=f"more than {DENIALS_PER_SECOND} denials in one second",
                    suppressed=suppressed,
                )
            )


def link_escapes(target: bytes, depth: int) -> str | None:
    """Why a symlink to ``target``, made ``depth`` directories below its mount's root, is
    refused (it would lead a host program walking the volume out of it), or None.

    ``..`` is allowed only at the start of a relative target, and no further up than the
    mount's root: after a name, a ``..`` may climb out through a symlink to a directory."""
    if target.startswith(b"/"):
        return "a symlink to an absolute path is refused"
    parts = [p for p in target.split(b"/") if p not in {b"", b"."}]
    climbs = 0
    while climbs < len(parts) and parts[climbs] == b"..":
        climbs += 1
    if b".." in parts[climbs:]:
        return "a symlink with '..' after a name is refused"
    if climbs > depth:
        return "a symlink that leads out of its mount is refused"
    return None
