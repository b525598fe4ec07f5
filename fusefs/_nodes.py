"""The server's inode table: synthetic directories, the /capsule/ files, and backing nodes,
each of which holds an ``O_PATH`` descriptor of the file it stands for.

Backing nodes are reached only by single-component ``openat(parent_fd, name,
O_PATH | O_NOFOLLOW)`` from their mount's root descriptor, never by a path string, so
``..``, symlinks and renames cannot lead outside a mount: a symlink is a node of its own
(the container's kernel resolves it inside the container's root), and a renamed file
keeps its descriptor. Decides nothing about policy.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import pyfuse3

from fusefs import _sys
from fusefs._policy import MountState

__all__ = ["Kind", "Node", "NodeTable", "SpecialFileError", "proc_path"]

_SERVED_TYPES: Final = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)


class Kind(enum.Enum):
    SYNTHETIC = "synthetic"  # a read-only directory on the way to a mount point
    INFO = "info"  # a read-only file of /capsule/
    BACKING = "backing"  # a file, directory or symlink beneath a mount's backing directory


class SpecialFileError(Exception):
    """A device node, socket or FIFO, or a crossing into another file system: never served."""


@dataclass(slots=True, eq=False)
class Node:
    ino: int
    kind: Kind
    parent: int
    name: bytes
    mount: MountState | None = None
    fd: int = -1
    key: tuple[int, int, int] | None = None  # (mount index, st_dev, st_ino)
    lookups: int = 0
    children: dict[bytes, int] = field(default_factory=dict)  # synthetic directories
    content: Callable[[], bytes] | None = None  # info files
    cache_key: tuple[int, int] | None = None  # (mtime_ns, size) the kernel's cache holds
    is_root: bool = False  # a mount's root: lives as long as the view

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.SYNTHETIC or (
            self.kind is Kind.BACKING and stat.S_ISDIR(os.fstat(self.fd).st_mode)
        )


def proc_path(fd: int) -> str:
    """The magic link that reopens an O_PATH descriptor as the file itself."""
    return f"/proc/self/fd/{fd}"


class NodeTable:
    """Inode number -> Node, with lookup counts as the kernel holds them."""

    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple[int, int, int], int] = {}
        self._next = pyfuse3.ROOT_INODE
        self.root = self.synthetic(pyfuse3.ROOT_INODE, b"")

    def __getitem__(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(2) from None  # ENOENT: the kernel forgot it already

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    def _add(self, node: Node) -> Node:
        self._nodes[node.ino] = node
        if node.parent in self._nodes and node.ino != node.parent:
            parent = self._nodes[node.parent]
            if parent.kind is not Kind.BACKING:
                parent.children[node.name] = node.ino
        return node

    def _number(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    def synthetic(self, parent: int, name: bytes) -> Node:
        return self._add(Node(self._number(), Kind.SYNTHETIC, parent, name, lookups=1))

    def info(self, parent: int, name: bytes, content: Callable[[], bytes]) -> Node:
        return self._add(Node(self._number(), Kind.INFO, parent, name, content=content, lookups=1))

    def mount_root(self, parent: int, name: bytes, mount: MountState, fd: int) -> Node:
        st = os.fstat(fd)
        node = Node(self._number(), Kind.BACKING, parent, name, mount, fd, lookups=1)
        node.is_root = True
        node.key = (mount.index, st.st_dev, st.st_ino)
        self._by_key[node.key] = node.ino
        return self._add(node)

    def child(self, parent: Node, name: bytes) -> tuple[Node, os.stat_result]:
        """The node for ``name`` in backing directory ``parent``, its lookup count raised."""
        try:
            fd = _sys.openat2(
                parent.fd,
                name,
                os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                _sys.RESOLVE_BENEATH | _sys.RESOLVE_NO_XDEV,
            )
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # a mount point, even a bind of the same file system
                raise SpecialFileError("another file system is mounted here") from None
            raise
        return self.adopt(parent, name, fd)

    def adopt(self, parent: Node, name: bytes, fd: int) -> tuple[Node, os.stat_result]:
        """Take ownership of ``fd`` (an O_PATH descriptor of ``name`` in ``parent``)."""
        assert parent.mount is not None  # noqa: S101 - backing nodes always have a mount
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) not in _SERVED_TYPES:
                raise SpecialFileError("a device node, socket or FIFO is never served")  # noqa: TRY301
            if parent.mount.dev is not None and st.st_dev != parent.mount.dev:
                raise SpecialFileError("another file system is mounted here")  # noqa: TRY301
        except BaseException:
            os.close(fd)
            raise
        key = (parent.mount.index, st.st_dev, st.st_ino)
        known = self._by_key.get(key)
        if known is not None:
            os.close(fd)
            node = self._nodes[known]
            node.parent, node.name = parent.ino, name
        else:
            node = Node(self._number(), Kind.BACKING, parent.ino, name, parent.mount, fd, key)
            self._by_key[key] = node.ino
            self._nodes[node.ino] = node
        node.lookups += 1
        return node, st

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node.kind is not Kind.BACKING or node.is_root:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[ino]
            if node.key is not None:
                self._by_key.pop(node.key, None)
            os.close(node.fd)

    def moved(self, old_parent: int, old: bytes, new_parent: int, new: bytes) -> None:
        """Keep audit paths right after a rename (best effort: names are for messages)."""
        for node in self._nodes.values():
            if node.parent == old_parent and node.name == old:
                node.parent, node.name = new_parent, new

    def path(self, node: Node, name: bytes = b"") -> str:
        """The node's path inside the view (of ``name`` in it, if given), for messages."""
        parts: list[bytes] = [name] if name else []
        while node.ino != pyfuse3.ROOT_INODE:
            parts.append(node.name)
            parent = self._nodes.get(node.parent)
            if parent is None or parent is node:
                break
            node = parent
        return "/" + "/".join(os.fsdecode(p) for p in reversed(parts))

    def of_mount(self, mount: MountState) -> list[Node]:
        return [n for n in self._nodes.values() if n.mount is mount]

    def close(self) -> None:
        for node in self._nodes.values():
            if node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
        self._nodes.clear()
        self._by_key.clear()
