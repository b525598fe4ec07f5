"""The bounded set of O_PATH descriptors a view's node table keeps open.

A view may know a million files; its server keeps at most ``capacity`` of their
descriptors open and reopens the others when they are next used (by one
``openat2`` beneath the parent, as the node table always opens). Descriptors leave in
the order they were opened. Those of files unlinked while the kernel still knows them
cannot be reopened (they have no name): they are kept apart, up to ``capacity`` too,
after which the oldest goes and its file answers ESTALE. Mount roots are never closed.

Evicted descriptors are closed only at :meth:`settle`, which the server calls between
requests, so a descriptor a handler holds is never closed, nor its number reused, while
that handler runs; ``on_close`` is shown each one just before it is closed (the quota
gives back the space of an unlinked file when the last descriptor of it goes). Opens and
resolves nothing itself, and never closes a descriptor it was not given.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["DEFAULT_CAPACITY", "Descriptors", "Holder", "capacity_for"]

#: descriptors of known files kept open when the open-file limit allows it
DEFAULT_CAPACITY: Final = 4096
#: the fewest kept open, however low the limit (a handler may hold a few at once)
_MINIMUM: Final = 64


def capacity_for(nofile: int) -> int:
    """How many descriptors of known files to keep open under an open-file limit of
    ``nofile``: a quarter of it, leaving the rest to the files the container opens."""
    return max(_MINIMUM, min(DEFAULT_CAPACITY, nofile // 4))


class Holder(Protocol):
    """What owns one descriptor: a node, whose ``fd`` is -1 once it is closed."""

    ino: int
    fd: int
    key: int  # the identity of the file it reaches


@dataclass(frozen=True, slots=True)
class DescriptorStatistics:
    open: int  # kept open and evictable
    pinned: int  # of unlinked files, kept until forgotten (or more than capacity of them)
    evicted: int  # closed to stay within capacity, since the start


class Descriptors:
    """Descriptors of nodes, at most ``capacity`` of them evictable at a time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._open: OrderedDict[int, Holder] = OrderedDict()  # ino -> holder, oldest first
        self._roots: list[Holder] = []  # never closed before the view is
        self._pinned: OrderedDict[int, Holder] = OrderedDict()  # unlinked: never reopened
        self._closing: list[tuple[Holder, int]] = []  # what held it, and the descriptor
        self._evicted = 0
        #: shown each descriptor, and what held it, just before it is closed
        self.on_close: Callable[[Holder, int], None] | None = None

    def add(self, holder: Holder, fd: int, *, root: bool = False) -> None:
        """``holder`` now owns ``fd``; the oldest evictable descriptor goes if over capacity
        (closed at the next :meth:`settle`). A ``root``'s stays until :meth:`close`."""
        holder.fd = fd
        if root:
            self._roots.append(holder)
            return
        self._open[holder.ino] = holder
        self._trim(self._open)

    def _trim(self, kept: OrderedDict[int, Holder]) -> None:
        while len(kept) > self.capacity:
            _, oldest = kept.popitem(last=False)
            self._closing.append((oldest, oldest.fd))
            oldest.fd = -1
            self._evicted += 1

    def pin(self, holder: Holder) -> None:
        """Keep ``holder``'s descriptor until :meth:`discard`: it can no longer be reopened."""
        if holder.fd >= 0 and self._open.pop(holder.ino, None) is not None:
            self._pinned[holder.ino] = holder
            self._trim(self._pinned)

    def discard(self, holder: Holder) -> None:
        """``holder`` is gone: close its descriptor (at the next :meth:`settle`)."""
        if holder.fd < 0:
            return
        if self._open.pop(holder.ino, None) is None:
            self._pinned.pop(holder.ino, None)
        self._closing.append((holder, holder.fd))
        holder.fd = -1

    def settle(self) -> None:
        """Close what was evicted or discarded: called when no handler holds a descriptor."""
        if not self._closing:  # most requests: nothing to close
            return
        closing, self._closing = self._closing, []
        failed: BaseException | None = None
        for holder, fd in closing:
            try:
                if self.on_close is not None:
                    self.on_close(holder, fd)
            except BaseException as exc:  # the rest are closed all the same; then it is raised
                failed = failed or exc
            os.close(fd)
        if failed is not None:
            raise failed

    def statistics(self) -> DescriptorStatistics:
        return DescriptorStatistics(len(self._open), len(self._pinned), self._evicted)

    def close(self) -> None:
        for holder in (*self._open.values(), *self._pinned.values(), *self._roots):
            self._closing.append((holder, holder.fd))
            holder.fd = -1
        self._open.clear()
        self._pinned.clear()
        self._roots.clear()
        self.settle()
