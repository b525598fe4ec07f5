"""The server's inode table: synthetic directories, the /capsule/ files, and backing nodes,
each of which stands for a file it reaches by an ``O_PATH`` descriptor.

Backing nodes are reached only by single-component ``openat2(parent_fd, name, O_PATH |
O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_XDEV)`` from their mount's root descriptor,
never by a path string, so ``..``, symlinks and renames cannot lead outside a mount: a
symlink is a node of its own (the container's kernel resolves it inside the container's
root), and renames through the view are followed. A bounded number of descriptors stay
open (``_descriptors``); a node whose descriptor was closed is reopened the same way,
from its parent's, and must still be the same file (device and inode) or the caller
gets ``ESTALE``. Decides nothing about policy.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import pyfuse3

from fusefs import _sys
from fusefs._descriptors import DEFAULT_CAPACITY, Descriptors
from fusefs._policy import MountState

__all__ = ["Kind", "Node", "NodeTable", "SpecialFileError", "identity", "proc_path"]

_SERVED_TYPES: Final = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)


class Kind(enum.Enum):
    SYNTHETIC = "synthetic"  # a read-only directory on the way to a mount point
    INFO = "info"  # a read-only file of /capsule/
    BACKING = "backing"  # a file, directory or symlink beneath a mount's backing directory


class SpecialFileError(Exception):
    """A device node, socket or FIFO, or a crossing into another file system: never served."""


@dataclass(slots=True, eq=False)
class Node:
    """One inode the kernel knows. ``fd`` is -1 until the node is first used (a directory
    listing names many files it never opens) and after its descriptor was evicted;
    :meth:`NodeTable.fd` opens it then."""

    ino: int
    kind: Kind
    parent: int
    name: bytes
    mount: MountState | None = None
    fd: int = -1
    key: int = -1  # the file's identity in its mount: see identity
    lookups: int = 0
    children: dict[bytes, int] | None = None  # synthetic directories only
    content: Callable[[], bytes] | None = None  # info files
    cache_key: tuple[int, int] | None = None  # (mtime_ns, size) the kernel's cache holds
    is_root: bool = False  # a mount's root: lives as long as the view


def proc_path(fd: int) -> str:
    """The magic link that reopens an O_PATH descriptor as the file itself."""
    return f"/proc/self/fd/{fd}"


class NodeTable:
    """Inode number -> Node, with lookup counts as the kernel holds them."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.descriptors = Descriptors(capacity)
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[int, int] = {}
        # parent -> name -> the node there: one dict per directory, and no (parent, name)
        # tuple per node, which would cost a third more memory per node
        self._by_name: dict[int, dict[bytes, int]] = {}
        self.roots: dict[int, Node] = {}  # mount index -> the node of its root
        self._next = pyfuse3.ROOT_INODE
        self.root = self.synthetic(pyfuse3.ROOT_INODE, b"")

    def __getitem__(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(2) from None  # ENOENT: the kernel forgot it already

    def _add(self, node: Node) -> Node:
        self._nodes[node.ino] = node
        if node.parent in self._nodes and node.ino != node.parent:
            parent = self._nodes[node.parent]
            if parent.children is not None:
                parent.children[node.name] = node.ino
        return node

    def _number(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    def synthetic(self, parent: int, name: bytes) -> Node:
        node = Node(self._number(), Kind.SYNTHETIC, parent, name, lookups=1, children={})
        return self._add(node)

    def info(self, parent: int, name: bytes, content: Callable[[], bytes]) -> Node:
        return self._add(Node(self._number(), Kind.INFO, parent, name, content=content, lookups=1))

    def mount_root(self, parent: int, name: bytes, mount: MountState, fd: int) -> Node:
        st = os.fstat(fd)
        node = Node(self._number(), Kind.BACKING, parent, name, mount, lookups=1)
        node.is_root = True
        self.descriptors.add(node, fd, root=True)
        node.key = identity(mount, st)
        self.roots[mount.index] = node
        self._by_key[node.key] = node.ino
        return self._add(node)

    def fd(self, node: Node) -> int:
        """The node's O_PATH descriptor, opened now from its parent's if it has none (and
        the parent's from its own, up to the first one open: a mount's root always is).

        Valid until the handler that asked returns (see :meth:`settle`). Raises
        FUSEError(ESTALE) when a name on the way now names another file or none, and
        SpecialFileError when it crosses into another file system."""
        if node.fd >= 0:
            return node.fd
        closed: list[Node] = []
        while node.fd < 0:
            parent = self._nodes.get(node.parent)
            if parent is None or parent.kind is not Kind.BACKING or not node.name:
                raise pyfuse3.FUSEError(errno.ESTALE)  # forgotten, or unlinked unopened
            closed.append(node)
            node = parent
        dir_fd = node.fd
        for node in reversed(closed):
            dir_fd = self._reopen(dir_fd, node)
        return dir_fd

    def _reopen(self, dir_fd: int, node: Node) -> int:
        try:
            fd = _open_beneath(dir_fd, node.name)
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None  # renamed or removed outside
        st = os.fstat(fd)
        assert node.mount is not None  # noqa: S101 - backing nodes always have a mount
        if identity(node.mount, st) != node.key:
            os.close(fd)
            raise pyfuse3.FUSEError(errno.ESTALE)
        self.descriptors.add(node, fd)
        return fd

    def settle(self) -> None:
        """Close the descriptors evicted since the last call: only between requests."""
        self.descriptors.settle()

    def child(self, parent: Node, name: bytes) -> tuple[Node, os.stat_result]:
        """The node for ``name`` in backing directory ``parent``, opened, its lookup count
        raised."""
        return self.adopt(parent, name, _open_beneath(self.fd(parent), name))

    def listed(self, parent: Node, name: bytes, dir_fd: int) -> tuple[Node, os.stat_result]:
        """Like :meth:`child` for an entry of a directory listing, but a file or symlink gets
        no descriptor until it is used (a stat is cheaper than an open). Directories are
        opened at once, so one with another file system mounted on it is never listed; a
        file with one mounted on it is refused when first used. ``dir_fd`` is
        ``self.fd(parent)``, asked for once per listing request."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if st.st_mode & 0o170000 == stat.S_IFDIR:
            return self.child(parent, name)
        return self._entry(parent, name, st), st

    def adopt(self, parent: Node, name: bytes, fd: int) -> tuple[Node, os.stat_result]:
        """Take ownership of ``fd`` (an O_PATH descriptor of ``name`` in ``parent``)."""
        try:
            st = os.fstat(fd)
            node = self._entry(parent, name, st)
        except BaseException:
            os.close(fd)
            raise
        if node.fd < 0:
            self.descriptors.add(node, fd)
        else:
            os.close(fd)
        return node, st

    def _entry(self, parent: Node, name: bytes, st: os.stat_result) -> Node:
        """The node of ``st`` at ``name`` in ``parent`` (known or new), its count raised."""
        mount = parent.mount
        assert mount is not None  # noqa: S101 - backing nodes always have a mount
        if stat.S_IFMT(st.st_mode) not in _SERVED_TYPES:
            raise SpecialFileError("a device node, socket or FIFO is never served")
        key = identity(mount, st)
        known = self._by_key.get(key)
        if known is not None:  # its device was checked when it became known
            node = self._nodes[known]
            names = self._by_name.get(parent.ino)
            if names is None or names.get(name) != known:  # moved, or a link's other name
                self._rename(node, parent.ino, name)
        elif mount.dev is not None and st.st_dev != mount.dev:
            raise SpecialFileError("another file system is mounted here")
        else:
            node = Node(self._number(), Kind.BACKING, parent.ino, name, mount, key=key)
            self._by_key[key] = node.ino
            self._nodes[node.ino] = node
            self._by_name.setdefault(parent.ino, {})[name] = node.ino
        node.lookups += 1
        return node

    def _rename(self, node: Node, parent: int, name: bytes) -> None:
        self._unname(node)
        node.parent, node.name = parent, name
        self._by_name.setdefault(parent, {})[name] = node.ino

    def _named(self, parent: int, name: bytes, *, pop: bool = False) -> int | None:
        """The node at ``name`` in ``parent``, if the table knows one (removed, if ``pop``)."""
        names = self._by_name.get(parent)
        if names is None:
            return None
        if not pop:
            return names.get(name)
        ino = names.pop(name, None)
        if not names:
            del self._by_name[parent]
        return ino

    def _unname(self, node: Node) -> None:
        """Forget that ``node`` is at its name, unless another node is there now."""
        names = self._by_name.get(node.parent)
        if names is not None and names.get(node.name) == node.ino:
            del names[node.name]
            if not names:
                del self._by_name[node.parent]

    def known(self, key: int) -> Node | None:
        """The node of the file whose identity is ``key``, if the kernel knows it."""
        ino = self._by_key.get(key)
        return None if ino is None else self._nodes.get(ino)

    def drop(self, node: Node) -> None:
        """``node``'s file has no name left and nothing of it is open: close its descriptor
        (at :meth:`settle`), so that the host frees the file now, not at the kernel's
        forget. The node answers ESTALE from then on."""
        self.descriptors.discard(node)

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node.kind is not Kind.BACKING or node.is_root:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[ino]
            self._by_key.pop(node.key, None)
            self._unname(node)
            self.descriptors.discard(node)

    def keep(self, parent: Node, name: bytes) -> None:
        """``name`` in ``parent`` is about to be unlinked or replaced: if the kernel knows
        its node, open it now, as nothing can reopen it once it has no name."""
        ino = self._named(parent.ino, name)
        node = self._nodes.get(ino) if ino is not None else None
        if node is not None and node.fd < 0:
            # the name no longer leads to this node (changed outside the view): then there
            # is nothing of it to keep, and the operation on the name goes ahead
            with contextlib.suppress(pyfuse3.FUSEError, OSError, SpecialFileError):
                self.fd(node)

    def _unnamed(self, ino: int | None) -> None:
        node = None if ino is None else self._nodes.get(ino)
        if node is not None:
            node.name = b""  # reached by its descriptor only, until the kernel forgets it
            self.descriptors.pin(node)

    def moved(self, old_parent: int, old: bytes, new_parent: int, new: bytes) -> None:
        """Follow a rename: the node at the old name is now at the new one."""
        self._unnamed(self._named(new_parent, new, pop=True))
        ino = self._named(old_parent, old)
        if ino is not None and ino in self._nodes:
            self._rename(self._nodes[ino], new_parent, new)

    def unlinked(self, parent: int, name: bytes) -> None:
        """``name`` in ``parent`` is gone: its node keeps only its descriptor, if it has one."""
        self._unnamed(self._named(parent, name, pop=True))

    def depth(self, node: Node) -> int:
        """How many directories below its mount's root a backing node is (the root: 0)."""
        depth = 0
        while not node.is_root and node.parent in self._nodes:
            node, depth = self._nodes[node.parent], depth + 1
        return depth

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

    def cached_of(self, mounts: Sequence[MountState]) -> list[tuple[int, int, bytes]]:
        """``(inode, parent inode, name)`` of every node of ``mounts`` the kernel may cache:
        its attributes and pages by inode, its name by the parent's (b"" once unlinked)."""
        wanted = {m.index for m in mounts}
        return [
            (n.ino, n.parent, n.name)
            for n in self._nodes.values()
            if n.mount and n.mount.index in wanted
        ]

    def close(self) -> None:
        self.descriptors.close()
        self._nodes.clear()
        self._by_key.clear()
        self._by_name.clear()


def identity(mount: MountState, st: os.stat_result) -> int:
    """(mount, st_dev, st_ino) as one int: a node's key, smaller than the tuple by half."""
    return ((st.st_ino << 64 | st.st_dev) << 16) | mount.index


def _open_beneath(dir_fd: int, name: bytes) -> int:
    """An O_PATH descriptor of ``name`` in ``dir_fd``, never following a link nor crossing
    into another mount (a bind of the same file system included)."""
    try:
        return _sys.openat2(
            dir_fd,
            name,
            os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
            _sys.RESOLVE_BENEATH | _sys.RESOLVE_NO_XDEV,
        )
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # a mount point, even a bind of the same file system
            raise SpecialFileError("another file system is mounted here") from None
        raise
