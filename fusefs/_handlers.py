"""What every FUSE handler of a view shares: the open files, the attributes shown, and
the resolving and checking each handler starts with.

Must not answer a request itself: the handlers in ``_changes`` and ``_ops`` do, with these.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pyfuse3

from fusefs._boundary import fill
from fusefs._listings import Listings
from fusefs._nodes import Kind, Node, NodeTable, SpecialFileError
from fusefs._policy import MountState, ViewPolicy
from fusefs._quota import Quotas

__all__ = ["INFO_FH", "OPEN_DROP", "Handlers", "Open"]

OPEN_DROP: Final = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_PATH
INFO_FH: Final = 1 << 62  # file handles at and above this are /capsule/ snapshots


@dataclass(slots=True)
class Open:
    node: Node
    fd: int
    write: bool
    content: bytes = b""


class Handlers(pyfuse3.Operations):
    """The state and helpers of one container's view, under its handlers."""

    enable_writeback_cache = False  # writes reach the server at once: quotas hold, fsync is real
    # No flush(): pyfuse3's default answers ENOSYS, after which the kernel stops sending
    # FLUSH on every close(). Nothing is buffered here for it to write, and it cost every
    # close a round trip.

    def __init__(self, policy: ViewPolicy, nodes: NodeTable) -> None:
        super().__init__()
        self.policy = policy
        self.nodes = nodes
        self.quotas = Quotas(policy, nodes)
        self.timeout = policy.view.cache_timeout
        self._handles: dict[int, Open] = {}
        self._listings = Listings(policy.view.listing_bytes)
        self._next_fh = 1

    # -- helpers -----------------------------------------------------------------------

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    def _attrs(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.entry_timeout = attrs.attr_timeout = self.timeout
        view = self.policy.view
        attrs.st_uid, attrs.st_gid = view.uid, view.gid
        if node.kind is Kind.BACKING:
            writable = node.mount is not None and node.mount.spec.writable
            fill(attrs, st or os.fstat(self._fd(node)), writable=writable)
        elif node.kind is Kind.INFO:
            assert node.content is not None  # noqa: S101 - info nodes always have content
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = len(node.content())
        else:
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
        return attrs

    def _fd(self, node: Node) -> int:
        """The node's descriptor, opened on first use; a crossing into another file system
        found then is refused and audited."""
        if node.fd >= 0:
            return node.fd
        try:
            return self.nodes.fd(node)
        except SpecialFileError as exc:
            self.policy.deny("lookup", self._where(node), node.mount, str(exc))
            raise  # pragma: no cover - deny raised

    def _where(self, node: Node, name: bytes = b"") -> Callable[[], str]:
        return functools.partial(self.nodes.path, node, name)

    def _backing(self, node: Node, ctx: pyfuse3.RequestContext, operation: str) -> MountState:
        """The node's mount, after the caller was checked."""
        path = self._where(node)
        if node.kind is not Kind.BACKING or node.mount is None:
            self.policy.caller(ctx.uid, operation, path, None)
            raise pyfuse3.FUSEError(errno.EROFS)
        self.policy.caller(ctx.uid, operation, path, node.mount)
        return node.mount

    def _check(
        self,
        node: Node,
        ctx: pyfuse3.RequestContext,
        operation: str,
        *,
        write: bool,
        name: bytes = b"",
    ) -> MountState:
        """Check the caller and the grant of ``node`` (of ``name`` in it, for messages)."""
        mount = self._backing(node, ctx, operation)
        self.policy.check(mount, operation, self._where(node, name), write=write, uid=ctx.uid)
        return mount

    def _child(self, parent: Node, name: bytes) -> tuple[Node, os.stat_result]:
        try:
            return self.nodes.child(parent, name)
        except SpecialFileError as exc:
            self.policy.deny("lookup", self._where(parent, name), parent.mount, str(exc))
            raise  # pragma: no cover - deny raised
