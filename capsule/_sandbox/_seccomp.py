"""Installing the container's seccomp filter on this process, and probing whether it can be.

No I/O beyond the syscalls it wraps and reads of ``/proc``; never imports the rest of capsule
except capsule.errors and the seccomp modules beside it: the program comes from
:func:`._seccomp_bpf.build_filter`, the policy it enforces is in :mod:`._seccomp_policy`.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Final

from capsule._sandbox._seccomp_bpf import BPF_MAXINSNS, INSN
from capsule._sandbox._seccomp_policy import native_arch
from capsule.errors import SandboxError

__all__ = [
    "available",
    "install_filter",
    "seccomp_mode",
]

_SECCOMP_SET_MODE_FILTER: Final = 1
_PR_GET_SECCOMP: Final = 21
_PR_SET_NO_NEW_PRIVS: Final = 38
_ACTIONS_AVAIL: Final = "/proc/sys/kernel/seccomp/actions_avail"
_NEEDED_ACTIONS: Final = ("errno", "kill_process")


# --- installing and inspecting -----------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    libc.syscall.restype = ctypes.c_long
    return libc


def _prctl(option: int, arg2: int = 0) -> tuple[int, int]:
    """``prctl(option, arg2, 0, 0, 0)`` as (result, errno)."""
    ctypes.set_errno(0)
    zero = ctypes.c_ulong(0)
    result: int = _libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), zero, zero, zero)
    return result, (ctypes.get_errno() if result == -1 else 0)


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, 'errno ' + str(code))} ({os.strerror(code)})"


_SECCOMP_HINTS: Final[Mapping[int, str]] = MappingProxyType(
    {
        errno.EINVAL: (
            "the kernel rejected the program or lacks filter mode (Linux >= 3.17 with "
            "CONFIG_SECCOMP_FILTER); install exactly the bytes build_filter() returned"
        ),
        errno.EACCES: (
            "no_new_privs did not stick and the process lacks CAP_SYS_ADMIN; "
            "check for a security module refusing PR_SET_NO_NEW_PRIVS"
        ),
        errno.ENOMEM: (
            "the process's stacked filters exceed the kernel's 32768-instruction limit; "
            "install the filter once per process"
        ),
        errno.ENOSYS: (
            "the kernel has no seccomp(2) or an outer sandbox blocks it; use Linux >= 3.17 with "
            "CONFIG_SECCOMP_FILTER, or allow seccomp(2) in the outer sandbox's profile"
        ),
        errno.EPERM: (
            "an outer sandbox refuses seccomp(2); allow it in the outer sandbox's profile"
        ),
    }
)


def install_filter(program: bytes) -> None:
    """Set no_new_privs and install ``program`` (from :func:`build_filter`) on this process.

    Uses ``seccomp(SECCOMP_SET_MODE_FILTER)`` without TSYNC: call it while the process is
    single-threaded. The filter applies to this process and every child it creates, and cannot
    be removed. Raises :class:`SandboxError` with the errno and a fix on failure.
    """
    count, rest = divmod(len(program), INSN.size)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise SandboxError(
            f"cannot install a seccomp program of {len(program)} bytes: it must be 1 to "
            f"{BPF_MAXINSNS} instructions of {INSN.size} bytes; pass build_filter()'s result"
        )
    seccomp_nr = native_arch().numbers["seccomp"]

    result, err = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if result != 0:
        raise SandboxError(
            f"prctl(PR_SET_NO_NEW_PRIVS) failed with {_errno_text(err)}: the kernel is older "
            "than 3.5 or an outer sandbox refuses prctl; run on a newer kernel or allow prctl"
        )

    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.addressof(buffer))
    ctypes.set_errno(0)
    result = _libc().syscall(
        ctypes.c_long(seccomp_nr),
        ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(0),
        ctypes.byref(fprog),
    )
    if result != 0:
        err = ctypes.get_errno()
        hint = _SECCOMP_HINTS.get(err, "check the kernel log (dmesg) for the reason")
        raise SandboxError(
            f"seccomp(SECCOMP_SET_MODE_FILTER) failed with {_errno_text(err)}: {hint}"
        )


def seccomp_mode() -> int:
    """This process's seccomp mode: 0 none, 1 strict, 2 filter.

    Read from the ``Seccomp:`` line of ``/proc/self/status``; without a readable ``/proc`` it
    asks ``prctl(PR_GET_SECCOMP)``. A kernel without seccomp reports 0.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            lines = status.read().splitlines()
    except OSError:
        result, _ = _prctl(_PR_GET_SECCOMP)
        return max(result, 0)
    for line in lines:
        key, _, value = line.partition(":")
        if key == "Seccomp":
            return int(value.strip())
    return 0  # no Seccomp line: the kernel is built without CONFIG_SECCOMP


def available() -> tuple[bool, str]:
    """Whether this process can install the filter, and a one-line reason when it cannot.

    Checks the machine and interpreter, that the kernel offers the ``errno`` and
    ``kill_process`` actions, and that ``prctl(PR_GET_SECCOMP)`` works. A process already under
    a filter can still stack this one. The reason is ``""`` when available.
    """
    try:
        native_arch()
    except SandboxError as exc:
        return False, str(exc)
    try:
        with open(_ACTIONS_AVAIL, encoding="ascii", errors="replace") as file:
            actions = set(file.read().split())
    except FileNotFoundError:
        return False, (
            f"{_ACTIONS_AVAIL} is missing: the kernel is older than 4.14 or built without "
            "CONFIG_SECCOMP_FILTER; run on a kernel with seccomp filters"
        )
    except OSError as exc:
        return False, f"cannot read {_ACTIONS_AVAIL}: {exc.strerror}; mount /proc readable"
    missing = [action for action in _NEEDED_ACTIONS if action not in actions]
    if missing:
        return False, (
            f"the kernel lacks the seccomp action(s) {', '.join(missing)}; "
            "kill_process needs Linux >= 4.14"
        )
    mode, err = _prctl(_PR_GET_SECCOMP)
    if mode < 0:
        return False, (
            f"prctl(PR_GET_SECCOMP) failed with {_errno_text(err)}: the kernel is built without "
            "CONFIG_SECCOMP"
        )
    return True, ""
