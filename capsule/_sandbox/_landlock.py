"""Landlock for a container: ctypes bindings for its three system calls and a recipe on top.

Applies the rules it is given; decides no policy, starts no thread and never imports the rest
of capsule except capsule.errors.

:func:`restrict` runs in the freshly forked, single-threaded container child after
``pivot_root``. It builds one ruleset that handles every access right this module knows and the
running kernel supports, so anything not granted by a :class:`PathRule` is denied:

* file system (ABI 1+; ``REFER`` from ABI 2, ``TRUNCATE`` from 3, ``IOCTL_DEV`` from 5): only
  what the rules allow beneath their paths;
* TCP (ABI 4+): every ``bind`` and ``connect`` is denied, as no network rule is ever added;
* scopes (ABI 6+): no connecting to abstract unix sockets and no signals to processes outside
  the container's Landlock domain.

Landlock restricts the calling thread and its future children only, and it is inherited across
``fork`` and ``execve``: it cannot be undone. Rights a newer kernel adds beyond those listed
here stay unhandled (allowed) until this module learns about them.

The system call numbers are those of the generic table (444, 445, 446), shared by x86_64 and
aarch64 and every architecture that wired Landlock up.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from capsule.errors import SandboxError

__all__ = ["ABI_FEATURES", "PathRule", "abi_version", "restrict"]

#: what each Landlock ABI level adds, for diagnostics (``capsule doctor``).
ABI_FEATURES: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "file system access",
        2: "rename/link across directories (refer)",
        3: "truncate",
        4: "TCP bind/connect",
        5: "device ioctl",
        6: "signal and abstract unix socket scoping",
        7: "audit logging flags",
    }
)

#: the first mainline kernel release shipping each ABI level (for error messages only).
_ABI_KERNEL: Final[Mapping[int, str]] = MappingProxyType(
    {1: "5.13", 2: "5.19", 3: "6.2", 4: "6.7", 5: "6.10", 6: "6.12", 7: "6.15"}
)

_RULE_OPEN: Final = os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW
_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LANDLOCK_ADD_RULE: Final = 445
_SYS_LANDLOCK_RESTRICT_SELF: Final = 446

_LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH: Final = 1

_PR_SET_NO_NEW_PRIVS: Final = 38

# File system access rights (include/uapi/linux/landlock.h).
_FS_EXECUTE: Final = 1 << 0
_FS_WRITE_FILE: Final = 1 << 1
_FS_READ_FILE: Final = 1 << 2
_FS_READ_DIR: Final = 1 << 3
_FS_REMOVE_DIR: Final = 1 << 4
_FS_REMOVE_FILE: Final = 1 << 5
_FS_MAKE_CHAR: Final = 1 << 6
_FS_MAKE_DIR: Final = 1 << 7
_FS_MAKE_REG: Final = 1 << 8
_FS_MAKE_SOCK: Final = 1 << 9
_FS_MAKE_FIFO: Final = 1 << 10
_FS_MAKE_BLOCK: Final = 1 << 11
_FS_MAKE_SYM: Final = 1 << 12
_FS_REFER: Final = 1 << 13  # ABI 2
_FS_TRUNCATE: Final = 1 << 14  # ABI 3
_FS_IOCTL_DEV: Final = 1 << 15  # ABI 5

# Network access rights (ABI 4).
_NET_BIND_TCP: Final = 1 << 0
_NET_CONNECT_TCP: Final = 1 << 1

# IPC scopes (ABI 6).
_SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
_SCOPE_SIGNAL: Final = 1 << 1

_FS_ABI_1: Final = (
    _FS_EXECUTE
    | _FS_WRITE_FILE
    | _FS_READ_FILE
    | _FS_READ_DIR
    | _FS_REMOVE_DIR
    | _FS_REMOVE_FILE
    | _FS_MAKE_CHAR
    | _FS_MAKE_DIR
    | _FS_MAKE_REG
    | _FS_MAKE_SOCK
    | _FS_MAKE_FIFO
    | _FS_MAKE_BLOCK
    | _FS_MAKE_SYM
)
#: the rights Landlock accepts in a rule on a non-directory; the others only make sense on
#: directories and are refused with EINVAL on files.
_FS_FILE_RIGHTS: Final = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV

_READ_RIGHTS: Final = _FS_READ_FILE | _FS_READ_DIR
#: creating regular files, directories and symlinks; never device nodes, sockets, FIFOs or
#: cross-directory links (REFER).
_WRITE_RIGHTS: Final = (
    _FS_WRITE_FILE
    | _FS_TRUNCATE
    | _FS_REMOVE_DIR
    | _FS_REMOVE_FILE
    | _FS_MAKE_DIR
    | _FS_MAKE_REG
    | _FS_MAKE_SYM
)

_HOW_TO_ENABLE: Final = (
    "Landlock needs Linux >= 5.13 built with CONFIG_SECURITY_LANDLOCK=y and enabled at boot "
    "by adding landlock to the lsm= list on the kernel command line "
    "(for example lsm=landlock,lockdown,yama,integrity,apparmor,bpf; "
    "see /sys/kernel/security/lsm for the current list)"
)


class _RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr``; its size grew with ABI 4 (net) and ABI 6 (scoped)."""

    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr``, packed: 12 bytes."""

    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


# dlopen(NULL): the symbols already loaded into the interpreter, libc among them; no file is
# searched for or read, and nothing is spawned (unlike ctypes.util.find_library).
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class PathRule:
    """What a container may do beneath ``path``: a directory, or a single file (``/dev/null``).

    ``read`` lists directories and reads files; ``write`` writes, truncates, creates and
    removes regular files, directories and symlinks (never device nodes, sockets or FIFOs);
    ``refer`` also links and renames across directories beneath ``path`` (ABI 2+);
    ``execute`` runs files; ``ioctl`` issues ioctl commands on devices. ``fd``, when given,
    is an open descriptor of the directory (used as it is, not reopened by ``path``, which
    then only names it in errors; the caller keeps it).
    """

    path: str
    read: bool = True
    write: bool = False
    execute: bool = False
    ioctl: bool = False
    refer: bool = False
    fd: int | None = None


def _errno_text(number: int) -> str:
    name = errno.errorcode.get(number, str(number))
    return f"{name} ({os.strerror(number)})"


def _landlock_create_ruleset(attr: _RulesetAttr | None, size: int, flags: int) -> int:
    """The raw call; returns its result or raises OSError."""
    pointer = ctypes.c_void_p(None) if attr is None else ctypes.byref(attr)
    result = int(
        _syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
            pointer,
            ctypes.c_size_t(size),
            ctypes.c_ulong(flags),
        )
    )
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def _landlock_add_path_rule(ruleset_fd: int, allowed_access: int, parent_fd: int) -> None:
    attr = _PathBeneathAttr(allowed_access=allowed_access, parent_fd=parent_fd)
    result = int(
        _syscall(
            ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
            ctypes.c_long(ruleset_fd),
            ctypes.c_long(_LANDLOCK_RULE_PATH_BENEATH),
            ctypes.byref(attr),
            ctypes.c_ulong(0),
        )
    )
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _landlock_restrict_self(ruleset_fd: int) -> None:
    result = int(
        _syscall(
            ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF),
            ctypes.c_long(ruleset_fd),
            ctypes.c_ulong(0),
        )
    )
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _set_no_new_privs() -> None:
    zero = ctypes.c_ulong(0)
    if _prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), zero, zero, zero) != 0:
        number = ctypes.get_errno()
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {_errno_text(number)}")


def abi_version() -> int:
    """The Landlock ABI level of the running kernel; 0 when Landlock is unsupported or disabled."""
    try:
        return _landlock_create_ruleset(None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise SandboxError(
            f"cannot query the Landlock ABI version: {_errno_text(exc.errno or 0)}"
        ) from None


def _handled_fs(abi: int) -> int:
    rights = _FS_ABI_1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def _rule_access(rule: PathRule, *, is_dir: bool, handled_fs: int) -> int:
    access = 0
    if rule.read:
        access |= _READ_RIGHTS
    if rule.write:
        access |= _WRITE_RIGHTS
    if rule.execute:
        access |= _FS_EXECUTE
    if rule.ioctl:
        access |= _FS_IOCTL_DEV
    if rule.refer:
        access |= _FS_REFER
    if not is_dir:
        access &= _FS_FILE_RIGHTS
    return access & handled_fs


def _too_old(abi: int, needed: int) -> str:
    have = "no Landlock (unsupported or disabled)" if abi == 0 else f"Landlock ABI {abi}"
    want = f"Landlock ABI >= {needed}"
    if needed in ABI_FEATURES:
        want += f" ({ABI_FEATURES[needed]})"
    if needed in _ABI_KERNEL:
        want += f", first in Linux {_ABI_KERNEL[needed]}"
    return f"the running kernel offers {have} but the sandbox needs {want}. {_HOW_TO_ENABLE}"


def _add_rule(ruleset_fd: int, rule: PathRule, handled_fs: int) -> None:
    path = rule.path
    try:
        fd = os.dup(rule.fd) if rule.fd is not None else os.open(path, _RULE_OPEN)
    except FileNotFoundError:
        raise SandboxError(f"Landlock rule path {path!r} does not exist") from None
    except OSError as exc:
        raise SandboxError(
            f"cannot open Landlock rule path {path!r}: {_errno_text(exc.errno or 0)}"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            raise SandboxError(
                f"Landlock rule path {path!r} is a symbolic link; give the path it points to"
            )
        access = _rule_access(rule, is_dir=stat.S_ISDIR(mode), handled_fs=handled_fs)
        if access == 0:
            # Landlock refuses an empty rule (ENOMSG); granting nothing is the default anyway.
            return
        try:
            _landlock_add_path_rule(ruleset_fd, access, fd)
        except OSError as exc:
            raise SandboxError(
                f"cannot add the Landlock rule for {path!r} (access {access:#x}): "
                f"{_errno_text(exc.errno or 0)}"
            ) from None
    finally:
        os.close(fd)


def restrict(rules: Sequence[PathRule], *, minimum_abi: int = 1) -> int:
    """Confine the calling thread and its future children to ``rules``; return the ABI used.

    Everything the running ABI can control and no rule grants is denied: file access outside
    the rules, all TCP bind/connect (ABI 4+), and abstract unix sockets and signals reaching
    outside the Landlock domain (ABI 6+). Sets ``PR_SET_NO_NEW_PRIVS``. Raises
    :class:`~capsule.errors.SandboxError` when the kernel's ABI is below ``minimum_abi`` (or
    Landlock is absent), when a rule's path is missing or a symbolic link, or when a call fails;
    the process is then not restricted by this call. Every descriptor opened here is closed.
    """
    abi = abi_version()
    needed = max(minimum_abi, 1)
    if abi < needed:
        raise SandboxError(_too_old(abi, needed))

    handled_fs = _handled_fs(abi)
    attr = _RulesetAttr(handled_access_fs=handled_fs, handled_access_net=0, scoped=0)
    size = 8  # handled_access_fs only
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24

    try:
        ruleset_fd = _landlock_create_ruleset(attr, size, 0)
    except OSError as exc:
        raise SandboxError(
            f"cannot create a Landlock ruleset (ABI {abi}): {_errno_text(exc.errno or 0)}"
        ) from None
    try:
        for rule in rules:
            _add_rule(ruleset_fd, rule, handled_fs)
        _set_no_new_privs()
        try:
            _landlock_restrict_self(ruleset_fd)
        except OSError as exc:
            raise SandboxError(
                f"cannot enforce the Landlock ruleset: {_errno_text(exc.errno or 0)}"
            ) from None
    finally:
        os.close(ruleset_fd)
    return abi
