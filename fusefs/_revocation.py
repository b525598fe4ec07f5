"""Closing a view's mounts when their tokens are revoked or expire, so that nothing the
kernel cached outlives the grant: the policy refuses first, then every inode and name the
kernel may hold for the mount is invalidated, and only then is the owner answered.

Runs in the server process. Decides nothing (the policy says what closes) and never
answers a FUSE request: the invalidations run in a worker thread, because the kernel may
wait on a request the server must answer while it drops a page.
"""

from __future__ import annotations

import errno
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import pyfuse3
import trio

from fusefs._control import FromServer, Revoked
from fusefs._nodes import NodeTable
from fusefs._policy import MountState, ViewPolicy

__all__ = ["Closer"]


class Closer:
    """Closes mounts for good and answers once the kernel can serve them no more."""

    def __init__(
        self, policy: ViewPolicy, nodes: NodeTable, send: Callable[[FromServer], None]
    ) -> None:
        self.policy = policy
        self.nodes = nodes
        self.send = send
        self._dropped: dict[int, trio.Event] = {}  # mount index -> set once its caches are
        self._rescheduled = trio.Event()

    async def revoke(self, tokens: Sequence[str], reason: str, seq: int) -> None:
        """Close the mounts ``tokens`` grant; answer ``seq`` once their caches are dropped,
        mounts closed earlier (by expiry, say) included."""
        closed = self.policy.revoke(set(tokens), reason)
        failed = await self._drop(closed)
        for mount in self.policy.mounts:
            event = self._dropped.get(mount.index)
            if mount.spec.token in tokens and event is not None:
                await event.wait()
        mounts = tuple(m.spec.view_path for m in closed)
        self.send(
            Revoked(tokens=tuple(tokens), mounts=mounts, reason=reason, seq=seq, failed=failed)
        )

    def reschedule(self) -> None:
        """The grants' expiries changed (renewed): :meth:`expire` looks again."""
        self._rescheduled.set()

    async def expire(self) -> None:
        """Close the mounts whose tokens are about to expire, as they come due."""
        while True:
            self._rescheduled = trio.Event()
            closes = self.policy.next_expiry()
            wait = math.inf if closes is None else closes - time.time()  # wall clock, as tokens
            with trio.move_on_after(max(0.0, wait)):
                await self._rescheduled.wait()
            closed = self.policy.expired()
            if closed:
                failed = await self._drop(closed)
                tokens = tuple(sorted({m.spec.token for m in closed if m.spec.token}))
                mounts = tuple(m.spec.view_path for m in closed)
                self.send(Revoked(tokens=tokens, mounts=mounts, reason="expired", failed=failed))

    async def _drop(self, closed: list[MountState]) -> int:
        """Invalidate what the kernel may cache of ``closed`` (already refused by the
        policy); returns how many invalidations failed for another reason than the kernel
        not holding the entry."""
        if not closed:
            return 0
        events = [self._dropped.setdefault(m.index, trio.Event()) for m in closed]
        cached = self.nodes.cached_of(closed)
        roots = [self.nodes.roots[m.index] for m in closed]
        entries = [(root.parent, root.name) for root in roots]  # the mounts' own names first
        entries += [(parent, name) for _, parent, name in cached if name]
        try:
            return await trio.to_thread.run_sync(_invalidate, [c[0] for c in cached], entries)
        finally:
            for event in events:
                event.set()


def _invalidate(inodes: Iterable[int], entries: Iterable[tuple[int, bytes]]) -> int:
    """Drop the attributes, pages and names the kernel holds (in a worker thread)."""
    failed = 0
    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as exc:
            failed += _failure(exc, f"inode {ino}")
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError as exc:
            failed += _failure(exc, f"name {name!r} in inode {parent}")
    return failed


def _failure(exc: OSError, what: str) -> int:
    if exc.errno == errno.ENOENT:  # the kernel does not hold it: nothing to drop
        return 0
    sys.stderr.write(f"fusefs: could not drop the kernel's cache of {what}: {exc}\n")
    return 1
