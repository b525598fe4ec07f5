"""What an owner does to a view's mount from outside: abort its connection, unmount it,
and find the ones a crashed owner left behind.

None of these touch the mount itself (no stat, no path walk into it), so none can hang
on a server that does not answer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from fusefs import _sys

__all__ = [
    "CONNECTIONS",
    "abort_connection",
    "connection_of",
    "fuse_mounts_beneath",
    "unmount",
]

CONNECTIONS: Final = Path("/sys/fs/fuse/connections")


def _fusectl_mounted() -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return any(" - fusectl " in line for line in f)


def abort_connection(connection: int) -> bool:
    """Abort FUSE connection ``connection``: every request waiting on it fails at once,
    and so does every later one. Mounts the fusectl file system first when it is
    missing and we are root. Returns whether the abort was written."""
    if not _fusectl_mounted() and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            _sys.mount("fusectl", str(CONNECTIONS), "fusectl", 0, "")
    try:
        (CONNECTIONS / str(connection) / "abort").write_text("1", encoding="ascii")
    except OSError:
        return False
    return True


def unmount(mountpoint: str) -> None:
    """Detach the mount at ``mountpoint`` (lazily: open files keep it until closed)."""
    if os.geteuid() == 0:
        with contextlib.suppress(FileNotFoundError, OSError):
            _sys.umount2(mountpoint, _sys.MNT_DETACH)
        return
    fusermount = shutil.which("fusermount3") or "fusermount3"
    subprocess.run(  # noqa: S603 - fixed arguments, a path we created
        [fusermount, "-u", "-z", "-q", mountpoint],
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _fuse_mounts() -> list[tuple[str, int]]:
    """Every fuse mount of this mount namespace and its connection number, from mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1].startswith("fuse"):
                major, minor = (int(part) for part in fields[2].split(":"))
                # the kernel's internal dev_t, as /sys/fs/fuse/connections names it
                found.append((fields[4].replace("\\040", " "), (major << 20) | minor))
    return found


def connection_of(mountpoint: str) -> int | None:
    """The connection number of the (last) fuse mount at ``mountpoint``, or None."""
    numbers = [number for point, number in _fuse_mounts() if point == mountpoint]
    return numbers[-1] if numbers else None


def fuse_mounts_beneath(directory: str) -> list[tuple[str, int]]:
    """The fuse mounts beneath ``directory`` and their connection numbers, deepest first."""
    prefix = directory.rstrip("/") + "/"
    found = [(point, n) for point, n in _fuse_mounts() if point.startswith(prefix)]
    return sorted(found, key=lambda item: len(item[0]), reverse=True)
