"""The FUSE handlers of a view that make, link, remove and rename names.

Each checks the caller and the grant, and keeps the mount's quota, before the backing
call; must not open files for reading or list directories (``_ops`` does).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

import pyfuse3

from fusefs import _sys
from fusefs._boundary import errno_boundary, valid_name
from fusefs._handlers import OPEN_DROP, Handlers, Open
from fusefs._nodes import Node, proc_path
from fusefs._policy import MountState, link_escapes

__all__ = ["NameChanges"]


class NameChanges(Handlers):
    """Creating and removing: mkdir, symlink, mknod, create, link, unlink, rmdir, rename."""

    async def _created(
        self, parent: Node, name: bytes, mount: MountState, make: Callable[[], object]
    ) -> pyfuse3.EntryAttributes:
        await self.quotas.room(mount, inodes=1)
        self.quotas.charge(mount, self._where(parent, name), "create", inodes=1)
        try:
            with self.quotas.layered(
                mount, self._where(parent, name), "create", [(parent, name)], whole=False
            ):
                make()
        except BaseException:
            self.quotas.refund(mount, inodes=1)
            raise
        node, st = self._child(parent, name)
        return self._attrs(node, st)

    @errno_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.nodes[parent_inode]
        name = valid_name(name)
        mount = self._check(parent, ctx, "mkdir", write=True, name=name)
        return await self._created(
            parent, name, mount, lambda: os.mkdir(name, mode & 0o777, dir_fd=self._fd(parent))
        )

    @errno_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.nodes[parent_inode]
        name = valid_name(name)
        mount = self._check(parent, ctx, "symlink", write=True, name=name)
        escape = link_escapes(target, self.nodes.depth(parent))
        if escape is not None:
            self.policy.deny("symlink", self._where(parent, name), mount, escape, code=errno.EPERM)
        return await self._created(
            parent, name, mount, lambda: os.symlink(target, name, dir_fd=self._fd(parent))
        )

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.nodes[parent_inode]
        self._check(parent, ctx, "mknod", write=True, name=name)
        where = self._where(parent, name)
        self.policy.deny(
            "mknod", where, parent.mount, "device nodes, sockets and FIFOs are refused"
        )
        raise AssertionError  # pragma: no cover - deny raised

    @errno_boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.nodes[parent_inode]
        name = valid_name(name)
        mount = self._check(parent, ctx, "create", write=True, name=name)
        base = (flags & ~OPEN_DROP) | os.O_CLOEXEC | os.O_NOFOLLOW
        await self.quotas.room(mount, inodes=1)
        self.quotas.charge(mount, self._where(parent, name), "create", inodes=1)
        try:
            with self.quotas.layered(
                mount, self._where(parent, name), "create", [(parent, name)], whole=False
            ):
                fd = os.open(
                    name, base | os.O_CREAT | os.O_EXCL, mode & 0o777, dir_fd=self._fd(parent)
                )
        except FileExistsError:
            self.quotas.refund(mount, inodes=1)
            if flags & os.O_EXCL:
                raise
            fd = self._open_existing(mount, parent, name, base)
        except BaseException:
            self.quotas.refund(mount, inodes=1)
            raise
        try:
            path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
            node, st = self.nodes.adopt(parent, name, path_fd)
        except BaseException:
            os.close(fd)
            raise
        fh = self._fh()
        self._handles[fh] = Open(node, fd, write=True)
        self.quotas.opened(node)
        return pyfuse3.FileInfo(fh=fh), self._attrs(node, st)

    def _open_existing(self, mount: MountState, parent: Node, name: bytes, flags: int) -> int:
        """Open ``name``, which a create found there already; what O_TRUNC cuts is given back."""
        st = os.stat(name, dir_fd=self._fd(parent), follow_symlinks=False)
        where = self._where(parent, name)
        with self.quotas.layered(mount, where, "open", [(parent, name)], copy=[(st, 0)]):
            fd = os.open(name, flags, dir_fd=self._fd(parent))
            if flags & os.O_TRUNC:
                self.quotas.refund(mount, nbytes=st.st_size)
        return fd

    @errno_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node, parent = self.nodes[inode], self.nodes[new_parent_inode]
        mount = self._check(parent, ctx, "link", write=True, name=new_name)
        if node.mount is not mount:
            raise pyfuse3.FUSEError(errno.EXDEV)
        st = os.fstat(self._fd(node))
        if stat.S_ISDIR(st.st_mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        new_name = valid_name(new_name)
        names = [(node, b""), (parent, new_name)]
        with self.quotas.layered(
            mount, self._where(parent, new_name), "link", names, copy=[(st, 0)]
        ):
            os.link(proc_path(self._fd(node)), new_name, dst_dir_fd=self._fd(parent))
        linked, st = self._child(parent, new_name)
        return self._attrs(linked, st)

    @errno_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.nodes[parent_inode]
        name = valid_name(name)
        mount = self._check(parent, ctx, "unlink", write=True, name=name)
        gone = os.stat(name, dir_fd=self._fd(parent), follow_symlinks=False)
        owned = self.quotas.owns(mount, parent, name)  # cow: the layer holds it, not the volume
        self.nodes.keep(parent, name)
        with self.quotas.layered(
            mount, self._where(parent, name), "unlink", [(parent, name)], whiteout=gone
        ):
            os.unlink(name, dir_fd=self._fd(parent))
        self.nodes.unlinked(parent.ino, name)
        if owned:  # once it is done: given back now or at its last close
            self.quotas.removed(mount, gone)

    @errno_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.nodes[parent_inode]
        name = valid_name(name)
        mount = self._check(parent, ctx, "rmdir", write=True, name=name)
        gone = os.stat(name, dir_fd=self._fd(parent), follow_symlinks=False)
        owned = self.quotas.owns(mount, parent, name)
        with self.quotas.layered(
            mount, self._where(parent, name), "rmdir", [(parent, name)], whiteout=gone
        ):
            os.rmdir(name, dir_fd=self._fd(parent))
        self.nodes.unlinked(parent.ino, name)
        if owned:
            self.quotas.removed(mount, gone)

    @errno_boundary
    async def rename(  # noqa: PLR0917 - pyfuse3's signature
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old, new = self.nodes[parent_inode_old], self.nodes[parent_inode_new]
        mount = self._check(old, ctx, "rename", write=True, name=name_old)
        if new.mount is not mount:
            self._backing(new, ctx, "rename")
            raise pyfuse3.FUSEError(errno.EXDEV)
        name_old, name_new = valid_name(name_old), valid_name(name_new)
        replaced = None
        if not flags & _sys.RENAME_EXCHANGE:
            replaced = self._replaced(old, name_old, new, name_new)
            self.nodes.keep(new, name_new)
        owned = self.quotas.owns(mount, new, name_new)
        copies = [(os.stat(name_old, dir_fd=self._fd(old), follow_symlinks=False), 0)]
        if flags & _sys.RENAME_EXCHANGE:  # cow: both files are copied up
            copies.append((os.stat(name_new, dir_fd=self._fd(new), follow_symlinks=False), 1))
        names = [(old, name_old), (new, name_new)]
        where = self._where(new, name_new)
        with self.quotas.layered(mount, where, "rename", names, copy=copies, whiteout=True):
            _sys.renameat2(self._fd(old), name_old, self._fd(new), name_new, flags)
        self.nodes.moved(old.ino, name_old, new.ino, name_new)
        if replaced is not None and owned:  # only once done: a refused one frees nothing
            self.quotas.removed(mount, replaced)

    def _replaced(
        self, old: Node, name_old: bytes, new: Node, name_new: bytes
    ) -> os.stat_result | None:
        """The file a rename of ``name_old`` to ``name_new`` would replace, if any (not the
        file itself, under another of its names: then the rename changes nothing)."""
        try:
            target = os.stat(name_new, dir_fd=self._fd(new), follow_symlinks=False)
        except FileNotFoundError:
            return None
        source = os.stat(name_old, dir_fd=self._fd(old), follow_symlinks=False)
        return None if os.path.samestat(source, target) else target
