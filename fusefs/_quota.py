"""The quotas of a view's writable mounts: what each holds on the host, charged before it
grows and given back once, when the host really frees it.

A mount's bytes are the apparent sizes (``st_size``) of its regular files, each file once
however many links it has; its inodes are its files, directories and symlinks. Both
include files unlinked while the server still holds a descriptor of them (a file the
container keeps open, or a node the kernel has not forgotten): the host keeps their
space until the server's last descriptor of them closes, so they stay charged until then.

That close often comes a moment after the unlink (the kernel sends the release of the file
the container just closed, and the forget of its node, asynchronously); so a charge that
would go over while such a file of its mount is still held first waits, a bounded
while, for it to be freed, and ``rm big; cp new big`` at the quota does not fail.

Counts, decides EDQUOT (through the policy, which audits it) and reads ``fstat`` of the
descriptors it is shown; never opens, closes or changes a file itself (it asks the node
table to close its descriptor of a file nothing can reach any more).

A ``cow`` mount's quota counts what its upper layer holds on the host (``_cow``): a
change that makes overlayfs copy a file of the volume up (an open for writing, a
truncation, a change of mode or times, a link, a rename) first charges the file's full
size and an inode, and one for each directory the copy makes on the way; a removal of a
name the volume has charges the whiteout that hides it (an inode); a removal gives back
only what the layer held. What the layer gained or lost on the way to the names an
operation touched is measured there, beneath the layer's descriptor, once it is done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import pyfuse3
import trio

from fusefs._cow import Layer, Path
from fusefs._descriptors import Holder
from fusefs._nodes import Node, NodeTable, identity
from fusefs._policy import MountState, ViewPolicy

__all__ = ["Quotas"]

#: what counts as a file of its own on the host, for the inode quota
_COUNTED: Final = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)
#: seconds a charge over the quota waits for held unlinked files of its mount to be freed
SETTLE_WAIT: Final = 0.5


@dataclass(slots=True)
class _Unlinked:
    """A file of ``mount`` that lost its last name while the server held it."""

    mount: MountState
    is_file: bool  # a regular file: its size is charged as well as its inode


class Quotas:
    """The byte and inode accounting of every mount of one view."""

    def __init__(self, policy: ViewPolicy, nodes: NodeTable) -> None:
        self.policy = policy
        self.nodes = nodes
        self._handles: dict[int, int] = {}  # file identity -> open handles of it
        self._unlinked: dict[int, _Unlinked] = {}  # file identity -> still charged
        self._freed = trio.Event()  # set, and replaced, whenever one of them is given back
        self.layers: dict[int, Layer] = {}  # a cow mount's index -> its upper layer
        nodes.descriptors.on_close = self._closing

    # -- copy-on-write mounts -------------------------------------------------------------

    def _parts(self, node: Node, name: bytes = b"") -> list[bytes] | None:
        """The names from its mount's root to ``node`` (and ``name`` in it); None for a
        node that lost its name (an unlinked file: the layer holds it under none)."""
        parts = [name] if name else []
        while not node.is_root:
            if not node.name:
                return None
            parts.append(node.name)
            try:
                node = self.nodes[node.parent]
            except pyfuse3.FUSEError:
                return None
        parts.reverse()
        return parts

    def owns(self, mount: MountState, parent: Node, name: bytes) -> bool:
        """Whether removing ``name`` in ``parent`` gives back a file through
        :meth:`removed`: always, but in a cow mount only a file or symlink its layer holds
        (what the layer holds of a directory is measured by :meth:`layered`)."""
        layer = self.layers.get(mount.index)
        if layer is None:
            return True
        parts = self._parts(parent, name)
        st = None if parts is None else layer.entry(parts)
        return st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))

    @contextlib.contextmanager
    def layered(
        self,
        mount: MountState,
        where: Callable[[], str],
        operation: str,
        names: Sequence[tuple[Node, bytes]],
        *,
        copy: Sequence[tuple[os.stat_result, int]] = (),
        whiteout: os.stat_result | bool = False,
        whole: bool = True,
    ) -> Iterator[None]:
        """Around an operation on ``names`` (a directory and a name in it, b"" for the
        directory itself) of a cow mount; nothing for other mounts. First charges (EDQUOT)
        what it may make the layer hold: the copy of each file of ``copy`` (its stat, and
        which of ``names`` it is) the layer lacks; a whiteout at the first name: always
        if ``whiteout`` is True (a rename: its source stays held), and if it is the stat
        of the file removed, unless the layer has that file and the host frees it at once
        (it is not held open), which leaves room for its whiteout; and the directories the
        layer lacks on the way to each.
        Once done, that estimate is replaced by what the layer gained or lost on the way
        to the names and at them (whiteouts; directories with all beneath them if
        ``whole``), and by the copies the layer now holds."""
        layer = self.layers.get(mount.index)
        paths = [self._parts(node, name) for node, name in names]
        if layer is None or not paths or any(p is None for p in paths):
            yield
            return
        found: list[Path] = [p for p in paths if p is not None]
        before = layer.held(found, whole=whole)
        lacking = [p for p in found if not layer.has(p)]
        nbytes = inodes = 0
        copied: list[tuple[int, int]] = []  # (size, which name) of each copy charged
        for st, index in copy:
            if not layer.has(found[index]):
                copied.append((st.st_size if stat.S_ISREG(st.st_mode) else 0, index))
        nbytes, inodes = sum(size for size, _ in copied), len(copied)
        if whiteout is True or (
            whiteout is not False
            and (
                not layer.has(found[0])
                or (not stat.S_ISDIR(whiteout.st_mode) and self._held(identity(mount, whiteout)))
            )
        ):
            inodes += 1
        inodes += sum(layer.missing(p) for p in found)
        self.charge(mount, where, operation, nbytes=nbytes, inodes=inodes)
        done = False
        try:
            yield
            done = True
        finally:
            after = layer.held(found, whole=whole)
            # a copy is in the layer at the name that lacked it, or at the last name once
            # done (a rename's target, which the layer may have had before)
            kept = [
                (size, 1)
                for size, index in copied
                if (found[index] in lacking and layer.has(found[index]))
                or (done and layer.has(found[-1]))
            ]
            self.refund(
                mount,
                nbytes=nbytes - sum(size for size, _ in kept) + before[0] - after[0],
                inodes=inodes - len(kept) + before[1] - after[1],
            )

    # -- charging ---------------------------------------------------------------------------

    async def room(self, mount: MountState, *, nbytes: int = 0, inodes: int = 0) -> bool:
        """Before a charge that would go over a quota while files of ``mount`` unlinked
        and still held are pending: wait (up to SETTLE_WAIT) until it fits or none is
        left. True if it waited (the caller measures again: other requests ran)."""
        if not self._over(mount, nbytes, inodes) or not self._pending(mount):
            return False
        with trio.move_on_after(SETTLE_WAIT):
            while self._over(mount, nbytes, inodes) and self._pending(mount):
                await self._freed.wait()
        return True

    @staticmethod
    def _over(mount: MountState, nbytes: int, inodes: int) -> bool:
        spec = mount.spec
        return (
            nbytes > 0
            and spec.quota_bytes is not None
            and mount.usage_bytes + nbytes > spec.quota_bytes
        ) or (
            inodes > 0
            and spec.quota_inodes is not None
            and mount.usage_inodes + inodes > spec.quota_inodes
        )

    def _pending(self, mount: MountState) -> bool:
        return any(u.mount is mount for u in self._unlinked.values())

    def charge(
        self,
        mount: MountState,
        where: Callable[[], str],
        operation: str,
        *,
        nbytes: int = 0,
        inodes: int = 0,
    ) -> None:
        """Account ``nbytes`` and ``inodes`` to the mount (negative: give back); EDQUOT,
        audited, if it would go over a quota."""
        spec = mount.spec
        for used, delta, limit, what in (
            (mount.usage_bytes, nbytes, spec.quota_bytes, "bytes"),
            (mount.usage_inodes, inodes, spec.quota_inodes, "inodes"),
        ):
            if delta > 0 and limit is not None and used + delta > limit:
                self.policy.deny(
                    operation,
                    where,
                    mount,
                    f"over its quota of {limit} {what}",
                    code=errno.EDQUOT,
                )
        self.refund(mount, nbytes=-nbytes, inodes=-inodes)

    @staticmethod
    def refund(mount: MountState, *, nbytes: int = 0, inodes: int = 0) -> None:
        """Give back what was charged for something not done (or now freed). Never below
        zero: a file the host put in the volume after the server counted it is not the
        feature's to give back."""
        mount.usage_bytes = max(0, mount.usage_bytes - nbytes)
        mount.usage_inodes = max(0, mount.usage_inodes - inodes)

    def removed(self, mount: MountState, st: os.stat_result) -> None:
        """A name of the file ``st`` was removed (unlinked, or replaced by a rename): if it
        was its last, the file is given back now, or when the server's last descriptor of
        it closes if it still holds one."""
        kind = stat.S_IFMT(st.st_mode)
        if kind not in _COUNTED or (kind != stat.S_IFDIR and st.st_nlink > 1):
            return  # another name still holds it (or it was never counted)
        key = identity(mount, st)
        if kind != stat.S_IFDIR and not self._handles.get(key):
            self._drop(key)  # nothing reaches a file with no name and nothing open
        if self._held(key):
            self._unlinked[key] = _Unlinked(mount, is_file=kind == stat.S_IFREG)
            return
        self.refund(mount, nbytes=st.st_size if kind == stat.S_IFREG else 0, inodes=1)

    def opened(self, node: Node) -> None:
        """The container opened ``node``: its file is held until :meth:`closing`."""
        self._handles[node.key] = self._handles.get(node.key, 0) + 1

    def closing(self, node: Node, fd: int) -> None:
        """The handle ``fd`` of ``node`` is about to be closed."""
        left = self._handles.pop(node.key, 1) - 1
        if left:
            self._handles[node.key] = left
        elif node.key in self._unlinked:
            self._drop(node.key)  # its last handle: nothing can reach it any more
        self._release(node.key, fd)

    def _closing(self, holder: Holder, fd: int) -> None:
        """The node table is about to close the descriptor ``fd`` of ``holder``."""
        self._release(holder.key, fd)

    def _drop(self, key: int) -> None:
        """Close the node table's descriptor of the file ``key`` (at the table's settle),
        a directory's excepted: a process may still stand in a removed directory."""
        node = self.nodes.known(key)
        if node is not None and node.fd >= 0:
            self.nodes.drop(node)

    def _held(self, key: int) -> bool:
        """Whether the server still has a descriptor of the file ``key`` (an open handle,
        or its node's own, which no longer counts once it was handed to be closed)."""
        if self._handles.get(key):
            return True
        node = self.nodes.known(key)
        return node is not None and node.fd >= 0

    def _release(self, key: int, fd: int) -> None:
        """``fd`` of the file ``key`` is about to close: if the file was unlinked and
        nothing else of the server's holds it, the host frees it now, so give it back."""
        if not self._unlinked or key not in self._unlinked or self._held(key):
            return
        unlinked = self._unlinked.pop(key)
        size = os.fstat(fd).st_size if unlinked.is_file else 0
        self.refund(unlinked.mount, nbytes=size, inodes=1)
        self._freed.set()
        self._freed = trio.Event()
