"""The upper layer of a copy-on-write mount, as its quota counts it: what the layer holds
at a name and on the way to it, looked up beneath the layer's own descriptor.

A cow mount's quota counts what its upper layer holds on the host: the sizes of the files
in it (copies of the volume's files its first change made included), and its entries
(files, directories, symlinks, and the whiteouts that hide removed files of the volume).
Each whiteout counts as an inode of its own, though overlayfs may make them all links of
one: each is an entry the layer holds, and not every file system shares them.

Looks names up with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)``
from the layer's descriptor, never by a path string; never changes, opens for reading
or keeps open anything but that descriptor; decides nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from typing import Final

from fusefs import _sys

__all__ = ["Layer", "Path", "whiteout"]

#: a name in the mount, as its components from the mount's root
Path = Sequence[bytes]

_RESOLVE: Final = _sys.RESOLVE_BENEATH | _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_XDEV


def whiteout(st: os.stat_result) -> bool:
    """An overlayfs whiteout: a character device 0/0 that hides a name of the lower layer."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class Layer:
    """One cow mount's upper directory, by an ``O_PATH`` descriptor the layer owns."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)

    def _directory(self, parts: Path) -> int | None:
        """An O_PATH descriptor of directory ``parts`` in the layer; None if it has none."""
        if not parts:
            return os.dup(self.fd)
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return _sys.openat2(self.fd, b"/".join(parts), flags, _RESOLVE)
        except OSError as exc:
            if exc.errno in {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV}:
                return None
            raise

    def entry(self, parts: Path) -> os.stat_result | None:
        """What the layer holds at ``parts`` (lstat), None if nothing."""
        if not parts:
            return os.fstat(self.fd)
        fd = self._directory(parts[:-1])
        if fd is None:
            return None
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def has(self, parts: Path) -> bool:
        """Whether the layer holds the file at ``parts`` itself (not a whiteout)."""
        st = self.entry(parts)
        return st is not None and not whiteout(st)

    def missing(self, parts: Path) -> int:
        """How many directories on the way to ``parts`` the layer does not hold yet (a copy
        up, or a whiteout, of ``parts`` makes each of them there)."""
        for depth in range(len(parts) - 1, 0, -1):
            fd = self._directory(parts[:depth])
            if fd is not None:
                os.close(fd)
                return len(parts) - 1 - depth
        return len(parts) - 1

    def held(self, paths: Sequence[Path], *, whole: bool) -> tuple[int, int]:
        """``(bytes, inodes)`` the layer holds on the way to each of ``paths`` (its
        directories, each once) and at it: a whiteout; a directory with all beneath it if
        ``whole``. A file or symlink at the name itself is not counted: the caller accounts
        for it (it may outlive its name, held open)."""
        seen: set[tuple[int, int]] = set()
        nbytes = inodes = 0
        for parts in paths:
            for depth in range(1, len(parts)):
                st = self.entry(parts[:depth])
                if st is None or not stat.S_ISDIR(st.st_mode):
                    break
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    inodes += 1
            st = self.entry(parts) if parts else None
            if st is None or (st.st_dev, st.st_ino) in seen:
                continue
            if whiteout(st):  # each one an entry of its own (see above)
                inodes += 1
            elif stat.S_ISDIR(st.st_mode) and whole:
                more = self._tree(parts, seen)
                nbytes, inodes = nbytes + more[0], inodes + more[1]
        return nbytes, inodes

    def _tree(self, parts: Path, seen: set[tuple[int, int]]) -> tuple[int, int]:
        """Everything in the layer at and beneath directory ``parts``."""
        fd = self._directory(parts)
        if fd is None:
            return 0, 0
        nbytes = inodes = 0
        try:
            top = os.fstat(fd)
            seen.add((top.st_dev, top.st_ino))
            inodes += 1
            walk = os.fwalk(".", follow_symlinks=False, dir_fd=fd)
            for _, dirs, files, dir_fd in walk:
                for name in files + dirs:
                    with contextlib.suppress(FileNotFoundError):  # gone meanwhile: not held
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        if whiteout(st):
                            inodes += 1
                            continue
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                        inodes += 1
                        if stat.S_ISREG(st.st_mode):
                            nbytes += st.st_size
        finally:
            os.close(fd)
        return nbytes, inodes
