"""The FUSE operations of one view: each handler decodes, resolves, checks, acts, answers.

Resolution is the node table's (descriptors, never path strings); checks are the
policy's; OSError becomes FUSEError in one place (``_boundary.errno_boundary``). Fast metadata
calls on the backing file system run inline; fsync runs in a worker thread. The
server serves one container only, so a slow backing call stalls nobody else. Making,
removing and renaming names is ``_changes``'s; what all handlers share, ``_handlers``'s.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

import pyfuse3

from fusefs._boundary import STRIP, errno_boundary, fill, in_worker, valid_name
from fusefs._changes import NameChanges
from fusefs._handlers import INFO_FH, OPEN_DROP, Open
from fusefs._nodes import Kind, Node, SpecialFileError, proc_path
from fusefs._policy import MountState

__all__ = ["ViewOperations"]


class ViewOperations(NameChanges):
    """One container's view: synthetic directories down to each mount, and /capsule/."""

    # -- names -------------------------------------------------------------------------

    @errno_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.nodes[parent_inode]
        name = valid_name(name)
        if parent.kind is not Kind.BACKING:
            self.policy.caller(ctx.uid, "lookup", self._where(parent), None)
            if parent.children is None:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            child = self.nodes[parent.children.get(name, -1)]
            child.lookups += 1
            return self._attrs(child)
        self._check(parent, ctx, "lookup", write=False, name=name)
        node, st = self._child(parent, name)
        return self._attrs(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.nodes.forget(ino, count)
        self.nodes.settle()

    @errno_boundary
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        node = self.nodes[inode]
        if node.kind is Kind.BACKING and ctx is not None:
            self._check(node, ctx, "getattr", write=False)
        return self._attrs(node)

    @errno_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.nodes[inode]
        mount = self._check(node, ctx, "setattr", write=True)
        st = os.fstat(self._fd(node))
        if fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        with self.quotas.layered(
            mount, self._where(node), "setattr", [(node, b"")], copy=[(st, 0)]
        ):
            await self._setattr(node, mount, attr, fields, st)
        return self._attrs(node)

    async def _setattr(
        self,
        node: Node,
        mount: MountState,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        st: os.stat_result,
    ) -> None:
        if fields.update_size:
            if not stat.S_ISREG(st.st_mode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            if await self.quotas.room(mount, nbytes=attr.st_size - st.st_size):
                st = os.fstat(self._fd(node))  # others ran meanwhile
            grow = attr.st_size - st.st_size
            self.quotas.charge(mount, self._where(node), "truncate", nbytes=grow)  # EDQUOT first
            try:
                os.truncate(proc_path(self._fd(node)), attr.st_size)
            except BaseException:
                self.quotas.refund(mount, nbytes=grow)  # not done: not charged
                raise
        if fields.update_mode and attr.st_mode & STRIP:  # never served: say so
            self.policy.deny(
                "chmod",
                self._where(node),
                mount,
                "set-user-ID and set-group-ID bits are never served",
                code=errno.EPERM,
            )
        if fields.update_mode and not stat.S_ISLNK(st.st_mode):
            os.chmod(proc_path(self._fd(node)), stat.S_IMODE(attr.st_mode) & ~STRIP)
        if (fields.update_atime or fields.update_mtime) and not stat.S_ISLNK(st.st_mode):
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(proc_path(self._fd(node)), ns=(atime, mtime))

    @errno_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.nodes[inode]
        self._check(node, ctx, "readlink", write=False)
        return os.readlink(b"", dir_fd=self._fd(node))

    @errno_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self.nodes[inode]
        self.policy.caller(ctx.uid, "access", self._where(node), node.mount)
        writable = node.mount is not None and node.mount.spec.writable
        alive = node.mount is None or node.mount.closed is None
        return alive and not (mode & os.W_OK and not writable)

    # -- files -------------------------------------------------------------------------

    @errno_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.nodes[inode]
        write = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if node.kind is Kind.INFO:
            self.policy.caller(ctx.uid, "open", self._where(node), None)
            if write:
                raise pyfuse3.FUSEError(errno.EROFS)
            assert node.content is not None  # noqa: S101 - info nodes always have content
            fh = INFO_FH + self._fh()
            self._handles[fh] = Open(node, -1, write=False, content=node.content())
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        mount = self._check(node, ctx, "open", write=write)
        st = os.fstat(self._fd(node))
        if not stat.S_ISREG(st.st_mode):
            raise pyfuse3.FUSEError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.ELOOP)
        if not write:  # nothing copied up, charged or given back: no quota bookkeeping
            fd = os.open(proc_path(self._fd(node)), (flags & ~OPEN_DROP) | os.O_CLOEXEC)
        else:  # cow: an open for writing copies the file up
            names = [(node, b"")]
            with self.quotas.layered(mount, self._where(node), "open", names, copy=[(st, 0)]):
                fd = os.open(proc_path(self._fd(node)), (flags & ~OPEN_DROP) | os.O_CLOEXEC)
                if flags & os.O_TRUNC:  # given back once the truncation happened
                    self.quotas.charge(mount, self._where(node), "open", nbytes=-st.st_size)
        keep = node.cache_key == (st.st_mtime_ns, st.st_size) and not flags & os.O_TRUNC
        node.cache_key = (st.st_mtime_ns, st.st_size)
        fh = self._fh()
        self._handles[fh] = Open(node, fd, write=write)
        self.quotas.opened(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    def _live(self, handle: Open, operation: str, *, write: bool) -> MountState:
        mount = handle.node.mount
        assert mount is not None  # noqa: S101 - only backing files have descriptors
        self.policy.check(mount, operation, self._where(handle.node), write=write)
        return mount

    @errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles[fh]
        if handle.fd < 0:
            return handle.content[off : off + size]
        self._live(handle, "read", write=False)
        return os.pread(handle.fd, size, off)

    @errno_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        mount = self._live(handle, "write", write=True)
        size = os.fstat(handle.fd).st_size
        if await self.quotas.room(mount, nbytes=off + len(buf) - size):
            size = os.fstat(handle.fd).st_size  # others ran meanwhile
        grow = max(0, off + len(buf) - size)
        self.quotas.charge(mount, self._where(handle.node), "write", nbytes=grow)  # EDQUOT first
        try:
            written = os.pwrite(handle.fd, buf, off)
        except BaseException:
            self.quotas.refund(mount, nbytes=grow)  # not written: not charged
            raise
        if written < len(buf):  # a short write grew the file by less
            self.quotas.refund(
                mount, nbytes=grow - (max(0, off + written - size) if written else 0)
            )
        return written

    @errno_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:  # noqa: FBT001 - pyfuse3's signature
        handle = self._handles[fh]
        if handle.fd >= 0:
            self._live(handle, "fsync", write=False)
            sync = os.fdatasync if datasync else os.fsync
            await in_worker(sync, handle.fd)

    @errno_boundary
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None or handle.fd < 0:
            return
        if handle.write:
            st = os.fstat(handle.fd)
            handle.node.cache_key = (st.st_mtime_ns, st.st_size)
        try:
            self.quotas.closing(handle.node, handle.fd)
        finally:
            os.close(handle.fd)

    # -- directories -------------------------------------------------------------------

    @errno_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.nodes[inode]
        if node.kind is Kind.BACKING:
            self._check(node, ctx, "readdir", write=False)
            names = os.listdir(os.fsencode(proc_path(self._fd(node))))
        elif node.children is not None:
            self.policy.caller(ctx.uid, "readdir", self._where(node), None)
            names = sorted(node.children)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        refusal = self._listings.over(names)
        if refusal is not None:
            del names  # not held while the refusal is reported
            self.policy.deny("readdir", self._where(node), node.mount, refusal, code=errno.ENOMEM)
        fh = self._fh()
        self._listings.add(fh, node, names)
        return fh

    @errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._listings[fh]
        directory, names = listing.node, listing.names
        if directory.mount is not None:  # opened before a revocation, read after it
            self.policy.check(directory.mount, "readdir", self._where(directory), write=False)
        if directory.kind is not Kind.BACKING:
            for index in range(start_id, len(names)):
                child = self.nodes[directory.children[names[index]]]  # type: ignore[index]
                child.lookups += 1
                if not pyfuse3.readdir_reply(token, names[index], self._attrs(child), index + 1):
                    child.lookups -= 1
                    return
            return
        # The hot loop of a listing: one stat per entry and one attributes object refilled
        # for each (readdir_reply copies it), nothing else that costs per entry.
        mount = directory.mount
        writable = mount is not None and mount.spec.writable
        attrs = self._attrs(directory)
        listed, reply = self.nodes.listed, pyfuse3.readdir_reply
        dir_fd = self._fd(directory)  # stays open until this handler returns
        for index in range(start_id, len(names)):
            name = names[index]
            try:
                node, st = listed(directory, name, dir_fd)
            except (OSError, SpecialFileError):
                continue  # gone since the listing, or never served: not listed
            attrs.st_ino = node.ino
            fill(attrs, st, writable=writable)
            if not reply(token, name, attrs, index + 1):
                self.nodes.forget(node.ino, 1)
                return

    async def releasedir(self, fh: int) -> None:
        self._listings.release(fh)

    @errno_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:  # noqa: FBT001 - pyfuse3's signature
        listing = self._listings[fh]
        if listing.node.kind is Kind.BACKING:
            fd = os.open(
                proc_path(self._fd(listing.node)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
            try:
                await in_worker(os.fsync, fd)
            finally:
                os.close(fd)

    @errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        writable = [m for m in self.policy.mounts if m.spec.writable]
        for mount in writable[:1]:
            host = os.statvfs(proc_path(self._fd(self.nodes.roots[mount.index])))
            free, files = host.f_bavail * host.f_frsize // 4096, host.f_favail
            if mount.spec.quota_bytes is not None:
                free = min(free, max(0, mount.spec.quota_bytes - mount.usage_bytes) // 4096)
            if mount.spec.quota_inodes is not None:
                files = min(files, max(0, mount.spec.quota_inodes - mount.usage_inodes))
            data.f_blocks = max(free, host.f_blocks * host.f_frsize // 4096)
            data.f_bfree = data.f_bavail = free
            data.f_files = max(files, host.f_files)
            data.f_ffree = data.f_favail = files
        return data
