"""ctypes wrappers for the few Linux calls the file-system server needs and Python lacks.

Thin and checked: each raises OSError with the errno and what was called; no policy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

__all__ = [
    "AT_FDCWD",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "MNT_DETACH",
    "MS_PRIVATE",
    "MS_REC",
    "PR_SET_PDEATHSIG",
    "RENAME_EXCHANGE",
    "RESOLVE_BENEATH",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "mount",
    "open_tree",
    "openat2",
    "prctl",
    "renameat2",
    "umount2",
    "unshare",
]

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUSER: Final = 0x10000000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 0x40000
MNT_DETACH: Final = 0x2
RENAME_EXCHANGE: Final = 2
PR_SET_PDEATHSIG: Final = 1
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
AT_FDCWD: Final = -100
_SYS_OPENAT2: Final = 437  # the same number on every architecture but alpha
_SYS_OPEN_TREE: Final = 428  # the generic table's number, shared the same way
_OPEN_TREE_CLONE: Final = 1
_AT_EMPTY_PATH: Final = 0x1000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _check(result: int, what: str) -> int:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    encoded = [None if s is None else os.fsencode(s) for s in (source, target, fstype, data)]
    result = _libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3])
    _check(result, f"mount({source!r}, {target!r}, {fstype!r})")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount2({target!r})")


def prctl(option: int, arg2: int = 0) -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0), f"prctl({option})")


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    """renameat2(2); names are single path components beneath the two directory fds."""
    result = _libc.renameat2(old_dir, old, new_dir, new, ctypes.c_uint(flags))
    _check(result, f"renameat2({old!r}, {new!r}, {flags})")


def open_tree(fd: int) -> int:
    """A detached copy of the mount at directory ``fd`` (``open_tree(OPEN_TREE_CLONE)``), usable
    as an overlay layer from another mount namespace; needs CAP_SYS_ADMIN."""
    flags = _OPEN_TREE_CLONE | _AT_EMPTY_PATH | os.O_CLOEXEC
    result = _libc.syscall(
        ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_uint(flags)
    )
    return _check(result, "open_tree(OPEN_TREE_CLONE)")


def openat2(dir_fd: int, name: bytes, flags: int, resolve: int) -> int:
    """openat2(2) without O_CREAT; EXDEV when RESOLVE_NO_XDEV meets a mount point."""
    how = _OpenHow(flags, 0, resolve)
    result = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(name),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    return _check(result, f"openat2({name!r})")
