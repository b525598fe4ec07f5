"""The seccomp policy as data: which syscalls are refused, and their numbers on each machine.

Tables and lookups only: no BPF, nothing installed; never imports the rest of capsule except
capsule.errors.

The policy (default allow; see THREATS.md items 5, 10, 16, 17, 18 and 19):

1. A syscall made through another ABI than the native one (``seccomp_data.arch`` is not the
   native ``AUDIT_ARCH``; on x86_64 this is every ``int 0x80``) kills the process, and so does
   any x86_64 syscall number with the x32 bit set.
2. ``clone3`` fails with ``ENOSYS``, every other name in :data:`DENIED_SYSCALLS` with ``EPERM``.
3. Argument checks (:data:`ARGUMENT_FILTERED_SYSCALLS`), each failing with ``EPERM`` unless said
   otherwise: ``clone`` with a namespace flag; ``socket`` and ``socketpair`` outside ``AF_UNIX``
   (``EAFNOSUPPORT``); ``ioctl`` ``TIOCSTI`` and ``TIOCLINUX``; ``personality`` other than
   ``PER_LINUX`` and the query ``0xffffffff``; ``prctl(PR_SET_DUMPABLE)`` (a container stays
   undumpable, so no core_pattern pipe ever sees its memory).

Sockets are refused only at creation: a TCP socket the broker passed in (``ctx.connect``,
``ctx.listen``) is used with send, recv, shutdown, get/setsockopt, getpeername and accept,
none of which the filter looks at. Pointing such a socket elsewhere (connect, bind) is
Landlock's to refuse (ABI 4+), and the broker passes sockets only where it does.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from capsule.errors import SandboxError

__all__ = [
    "ARGUMENT_FILTERED_SYSCALLS",
    "DENIED_SYSCALLS",
    "ENOSYS_SYSCALLS",
    "EPERM_SYSCALLS",
    "SUPPORTED_MACHINES",
    "Arch",
    "arch_for",
    "native_arch",
    "syscall_numbers",
]

# --- policy ------------------------------------------------------------------------------------

#: Refused with EPERM whatever the arguments (names the native table lacks are skipped).
EPERM_SYSCALLS: Final = frozenset(
    {
        # Mounts, old and new API, and changing the root (THREATS 5).
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "open_tree_attr",
        "mount_setattr",
        # Namespaces (THREATS 16, 18).
        "unshare",
        "setns",
        # Reaching into other processes (THREATS 10).
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "process_madvise",
        "pidfd_getfd",
        "kcmp",
        "move_pages",
        "migrate_pages",
        # Kernel attack surface a feature never needs (THREATS 18).
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "fanotify_init",
        "modify_ldt",
        "iopl",
        "ioperm",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
        "nfsservctl",
        "lookup_dcookie",
        "name_to_handle_at",
        "open_by_handle_at",
        # Host administration: modules, kexec, power, swap, accounting, clocks, logs, quotas,
        # names, terminals.
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "syslog",
        "quotactl",
        "quotactl_fd",
        "sethostname",
        "setdomainname",
        "vhangup",
    }
)

#: clone3 passes its flags in a struct in memory, which a seccomp filter cannot read, so it cannot
#: be checked for namespace flags like clone. ENOSYS (rather than EPERM) makes glibc's
#: pthread_create, fork and posix_spawn fall back to clone(2), whose flags are checked.
ENOSYS_SYSCALLS: Final = frozenset({"clone3"})

#: Every syscall the filter refuses whatever its arguments: clone3 with ENOSYS, the rest with
#: EPERM. Names without a number on the native machine (modify_ldt on aarch64) are skipped there.
DENIED_SYSCALLS: Final[frozenset[str]] = EPERM_SYSCALLS | ENOSYS_SYSCALLS

#: Syscalls allowed or refused depending on their arguments.
ARGUMENT_FILTERED_SYSCALLS: Final[frozenset[str]] = frozenset(
    {"clone", "socket", "socketpair", "ioctl", "personality", "prctl"}
)


# --- syscall tables ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arch:
    machine: str
    audit_arch: int
    x32_bit: bool
    numbers: Mapping[str, int]


# From arch/x86/entry/syscalls/syscall_64.tbl (the "common" and "64" entries).
_X86_64_NUMBERS: Final = {
    "ioctl": 16,
    "socket": 41,
    "socketpair": 53,
    "clone": 56,
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "personality": 135,
    "prctl": 157,
    "ustat": 136,
    "sysfs": 139,
    "vhangup": 153,
    "modify_ldt": 154,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "nfsservctl": 180,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "migrate_pages": 256,
    "unshare": 272,
    "move_pages": 279,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "seccomp": 317,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "open_tree_attr": 467,
}

# From include/uapi/asm-generic/unistd.h as arm64 builds it (64-bit, with clone3).
_AARCH64_NUMBERS: Final = {
    "lookup_dcookie": 18,
    "ioctl": 29,
    "umount2": 39,
    "mount": 40,
    "pivot_root": 41,
    "nfsservctl": 42,
    "chroot": 51,
    "vhangup": 58,
    "quotactl": 60,
    "acct": 89,
    "personality": 92,
    "prctl": 167,
    "unshare": 97,
    "kexec_load": 104,
    "init_module": 105,
    "delete_module": 106,
    "clock_settime": 112,
    "syslog": 116,
    "ptrace": 117,
    "reboot": 142,
    "sethostname": 161,
    "setdomainname": 162,
    "settimeofday": 170,
    "adjtimex": 171,
    "socket": 198,
    "socketpair": 199,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "clone": 220,
    "swapon": 224,
    "swapoff": 225,
    "migrate_pages": 238,
    "move_pages": 239,
    "perf_event_open": 241,
    "fanotify_init": 262,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "clock_adjtime": 266,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "finit_module": 273,
    "seccomp": 277,
    "bpf": 280,
    "userfaultfd": 282,
    "kexec_file_load": 294,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "open_tree_attr": 467,
}

_ARCHES: Final[Mapping[str, Arch]] = MappingProxyType(
    {
        # AUDIT_ARCH_X86_64 = EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        "x86_64": Arch(
            machine="x86_64",
            audit_arch=0xC000_003E,
            x32_bit=True,
            numbers=MappingProxyType(_X86_64_NUMBERS),
        ),
        # AUDIT_ARCH_AARCH64 = EM_AARCH64 (183) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        "aarch64": Arch(
            machine="aarch64",
            audit_arch=0xC000_00B7,
            x32_bit=False,
            numbers=MappingProxyType(_AARCH64_NUMBERS),
        ),
    }
)

#: The machines (``os.uname().machine``) a filter can be built for.
SUPPORTED_MACHINES: Final[frozenset[str]] = frozenset(_ARCHES)


def arch_for(machine: str) -> Arch:
    arch = _ARCHES.get(machine)
    if arch is None:
        supported = " and ".join(sorted(_ARCHES))
        raise SandboxError(
            f"no seccomp filter for machine {machine!r}: capsule has syscall tables for "
            f"{supported} only; run the containers on one of those"
        )
    return arch


def native_arch() -> Arch:
    machine = os.uname().machine
    arch = arch_for(machine)
    # A 32-bit interpreter on a 64-bit kernel reports the kernel's machine but makes its
    # syscalls through the 32-bit ABI, which the filter kills.
    if struct.calcsize("P") != 8 or sys.byteorder != "little":
        bits = struct.calcsize("P") * 8
        raise SandboxError(
            f"no seccomp filter for a {bits}-bit {sys.byteorder}-endian Python on {machine}: "
            "the filter only allows the native 64-bit ABI; run capsule with a 64-bit "
            f"{machine} interpreter"
        )
    return arch


def syscall_numbers(machine: str | None = None) -> Mapping[str, int]:
    """The syscall numbers the filter uses for ``machine`` (default: this process's machine).

    Covers every name in :data:`DENIED_SYSCALLS` and :data:`ARGUMENT_FILTERED_SYSCALLS` that
    exists there, plus ``seccomp``. Raises :class:`SandboxError` for an unsupported machine.
    """
    arch = native_arch() if machine is None else arch_for(machine)
    return arch.numbers
