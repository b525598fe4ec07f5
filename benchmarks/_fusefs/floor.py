"""The floor of a listing served by pyfuse3: a file system of one directory, ``listing``,
whose entries and their attributes are made once at start; a listing only hands them to
``pyfuse3.readdir_reply``. It is what any pyfuse3 server pays for ``os.listdir``
(READDIRPLUS round trips, one ``readdir_reply`` call per entry, the kernel taking in each
entry's attributes) before doing any work of its own: no stat, no node table, no policy.

Must not be imported: ``fusefs.py`` runs it as a process of its own
(``python floor.py MOUNTPOINT ENTRIES TIMEOUT``) and unmounts it; it never unmounts.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Sequence

import pyfuse3
import trio

_LISTING_INO = pyfuse3.ROOT_INODE + 1
_FIRST_ENTRY_INO = _LISTING_INO + 1


class Floor(pyfuse3.Operations):
    """``/listing`` holds ``entries`` empty files named as ``make_backing`` names them."""

    def __init__(self, entries: int, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.names = [f"entry-{index:05d}".encode() for index in range(entries)]
        self.entries = [
            self._attributes(_FIRST_ENTRY_INO + index, stat.S_IFREG | 0o644)
            for index in range(entries)
        ]

    def _attributes(self, ino: int, mode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = ino
        attrs.st_mode = mode
        attrs.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        attrs.st_blksize = 4096
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = time.time_ns()
        attrs.entry_timeout = attrs.attr_timeout = self.timeout
        return attrs

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode in {pyfuse3.ROOT_INODE, _LISTING_INO}:
            return self._attributes(inode, stat.S_IFDIR | 0o755)
        if _FIRST_ENTRY_INO <= inode < _FIRST_ENTRY_INO + len(self.entries):
            return self.entries[inode - _FIRST_ENTRY_INO]
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name == b"listing":
            return self._attributes(_LISTING_INO, stat.S_IFDIR | 0o755)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh != _LISTING_INO:
            return
        names, entries, reply = self.names, self.entries, pyfuse3.readdir_reply
        for index in range(start_id, len(names)):
            if not reply(token, names[index], entries[index], index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return  # nothing is ever dropped: every entry lives as long as the process


def main(argv: Sequence[str]) -> None:
    mountpoint, entries, timeout = argv
    pyfuse3.init(Floor(int(entries), float(timeout)), mountpoint, {"fsname=pyfuse3-floor"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main(sys.argv[1:])
