"""The container's seccomp filter: a classic-BPF program assembled in Python, and its installation.

No I/O beyond the syscalls it wraps and reads of ``/proc``; never imports the rest of capsule
except capsule.errors.

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

The program is a straight list of short forward jumps. Syscalls whose verdict does not depend on
their arguments only ever load ``nr`` and ``arch``, so the kernel's seccomp action cache
(Linux >= 5.11) can allow them without running the filter at all.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Final

from capsule.errors import InternalError, SandboxError

__all__ = [
    "ARGUMENT_FILTERED_SYSCALLS",
    "DENIED_SYSCALLS",
    "SUPPORTED_MACHINES",
    "available",
    "build_filter",
    "install_filter",
    "seccomp_mode",
    "syscall_numbers",
]

# --- classic BPF (linux/filter.h, linux/bpf_common.h) ----------------------------------------

_BPF_LD_W_ABS: Final = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS: A = u32 at data[k]
_BPF_JEQ_K: Final = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K: A == k ?
_BPF_JSET_K: Final = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K: A & k ?
_BPF_RET_K: Final = 0x06 | 0x00  # BPF_RET | BPF_K: return k
_JUMPS: Final = frozenset({_BPF_JEQ_K, _BPF_JSET_K})

#: struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }, little endian like every
#: machine this module supports.
_INSN: Final = struct.Struct("<HBBI")
_BPF_MAXINSNS: Final = 4096
_MAX_JUMP: Final = 0xFF

# --- seccomp (linux/seccomp.h) -----------------------------------------------------------------

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_OFF_ARGS: Final = 16

_RET_KILL_PROCESS: Final = 0x8000_0000
_RET_ERRNO: Final = 0x0005_0000
_RET_ALLOW: Final = 0x7FFF_0000

_SECCOMP_SET_MODE_FILTER: Final = 1
_PR_GET_SECCOMP: Final = 21
_PR_SET_NO_NEW_PRIVS: Final = 38
_ACTIONS_AVAIL: Final = "/proc/sys/kernel/seccomp/actions_avail"
_NEEDED_ACTIONS: Final = ("errno", "kill_process")

# --- the constants the argument checks compare with ---------------------------------------------

_X32_SYSCALL_BIT: Final = 0x4000_0000

_CLONE_NEWTIME: Final = 0x0000_0080
_CLONE_NEWNS: Final = 0x0002_0000
_CLONE_NEWCGROUP: Final = 0x0200_0000
_CLONE_NEWUTS: Final = 0x0400_0000
_CLONE_NEWIPC: Final = 0x0800_0000
_CLONE_NEWUSER: Final = 0x1000_0000
_CLONE_NEWPID: Final = 0x2000_0000
_CLONE_NEWNET: Final = 0x4000_0000
# For clone(2) the low byte of the flags is the exit signal (CSIGNAL), so CLONE_NEWTIME can only
# be asked for through clone3 or unshare. Keeping its bit in the mask only refuses exit signals
# >= 128, which the kernel rejects as invalid anyway.
_CLONE_NAMESPACE_FLAGS: Final = (
    _CLONE_NEWNS
    | _CLONE_NEWCGROUP
    | _CLONE_NEWUTS
    | _CLONE_NEWIPC
    | _CLONE_NEWUSER
    | _CLONE_NEWPID
    | _CLONE_NEWNET
    | _CLONE_NEWTIME
)

_AF_UNIX: Final = 1
_TIOCSTI: Final = 0x5412  # same value on x86_64 and aarch64 (asm-generic/ioctls.h)
_TIOCLINUX: Final = 0x541C
_PER_LINUX: Final = 0x0000_0000
_PERSONALITY_QUERY: Final = 0xFFFF_FFFF
_PR_SET_DUMPABLE: Final = 4

# --- policy ------------------------------------------------------------------------------------

#: Refused with EPERM whatever the arguments (names the native table lacks are skipped).
_EPERM_SYSCALLS: Final = frozenset(
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
_ENOSYS_SYSCALLS: Final = frozenset({"clone3"})

#: Every syscall the filter refuses whatever its arguments: clone3 with ENOSYS, the rest with
#: EPERM. Names without a number on the native machine (modify_ldt on aarch64) are skipped there.
DENIED_SYSCALLS: Final[frozenset[str]] = _EPERM_SYSCALLS | _ENOSYS_SYSCALLS

#: Syscalls allowed or refused depending on their arguments.
ARGUMENT_FILTERED_SYSCALLS: Final[frozenset[str]] = frozenset(
    {"clone", "socket", "socketpair", "ioctl", "personality", "prctl"}
)


# --- syscall tables ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Arch:
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

_ARCHES: Final[Mapping[str, _Arch]] = MappingProxyType(
    {
        # AUDIT_ARCH_X86_64 = EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        "x86_64": _Arch(
            machine="x86_64",
            audit_arch=0xC000_003E,
            x32_bit=True,
            numbers=MappingProxyType(_X86_64_NUMBERS),
        ),
        # AUDIT_ARCH_AARCH64 = EM_AARCH64 (183) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        "aarch64": _Arch(
            machine="aarch64",
            audit_arch=0xC000_00B7,
            x32_bit=False,
            numbers=MappingProxyType(_AARCH64_NUMBERS),
        ),
    }
)

#: The machines (``os.uname().machine``) a filter can be built for.
SUPPORTED_MACHINES: Final[frozenset[str]] = frozenset(_ARCHES)


def _arch_for(machine: str) -> _Arch:
    arch = _ARCHES.get(machine)
    if arch is None:
        supported = " and ".join(sorted(_ARCHES))
        raise SandboxError(
            f"no seccomp filter for machine {machine!r}: capsule has syscall tables for "
            f"{supported} only; run the containers on one of those"
        )
    return arch


def _native_arch() -> _Arch:
    machine = os.uname().machine
    arch = _arch_for(machine)
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
    arch = _native_arch() if machine is None else _arch_for(machine)
    return arch.numbers


# --- the assembler -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Insn:
    code: int
    k: int
    jt: int | None = None  # a label, or None for the next instruction
    jf: int | None = None


class _Assembler:
    """Instructions with symbolic forward jump targets, resolved by :meth:`assemble`."""

    def __init__(self) -> None:
        self._insns: list[_Insn] = []
        self._labels: dict[int, int] = {}
        self._next_label = 0

    def label(self) -> int:
        self._next_label += 1
        return self._next_label

    def place(self, label: int) -> None:
        self._labels[label] = len(self._insns)

    def load(self, offset: int) -> None:
        self._insns.append(_Insn(_BPF_LD_W_ABS, offset))

    def jump(self, code: int, k: int, *, jt: int | None = None, jf: int | None = None) -> None:
        self._insns.append(_Insn(code, k, jt, jf))

    def ret(self, action: int) -> None:
        self._insns.append(_Insn(_BPF_RET_K, action))

    def _offset(self, index: int, label: int | None) -> int:
        if label is None:
            return 0
        offset = self._labels[label] - index - 1
        if not 0 <= offset <= _MAX_JUMP:
            raise InternalError(
                f"seccomp filter: jump at instruction {index} spans {offset} instructions, "
                f"outside 0..{_MAX_JUMP}; split the check into shorter groups"
            )
        return offset

    def assemble(self) -> bytes:
        if not 0 < len(self._insns) <= _BPF_MAXINSNS:
            raise InternalError(f"seccomp filter has {len(self._insns)} instructions")
        if self._insns[-1].code != _BPF_RET_K:
            raise InternalError("seccomp filter does not end with a return")
        out = bytearray()
        for index, insn in enumerate(self._insns):
            jt = self._offset(index, insn.jt)
            jf = self._offset(index, insn.jf)
            if insn.code not in _JUMPS and (jt or jf):
                raise InternalError(f"seccomp filter: instruction {index} is not a jump")
            out += _INSN.pack(insn.code, jt, jf, insn.k)
        return bytes(out)


def _arg_low(index: int) -> int:
    """Offset of the low 32-bit word of ``args[index]`` (little endian)."""
    return _OFF_ARGS + 8 * index


def _errno(code: int) -> int:
    return _RET_ERRNO | code


# Syscalls per group of equality tests sharing one return: keeps each jump under _MAX_JUMP.
_GROUP: Final = 128


def _refuse_numbers(asm: _Assembler, numbers: list[int], action: int) -> None:
    """Return ``action`` when the accumulator (the syscall number) is one of ``numbers``."""
    for start in range(0, len(numbers), _GROUP):
        group = numbers[start : start + _GROUP]
        hit, miss = asm.label(), asm.label()
        for nr in group[:-1]:
            asm.jump(_BPF_JEQ_K, nr, jt=hit)
        asm.jump(_BPF_JEQ_K, group[-1], jf=miss)
        asm.place(hit)
        asm.ret(action)
        asm.place(miss)


def _check_arch(asm: _Assembler, arch: _Arch) -> None:
    """Only the native ABI: anything else (int 0x80, AArch32, x32) kills the whole process."""
    arch_ok = asm.label()
    asm.load(_OFF_ARCH)
    asm.jump(_BPF_JEQ_K, arch.audit_arch, jt=arch_ok)
    asm.ret(_RET_KILL_PROCESS)
    asm.place(arch_ok)
    asm.load(_OFF_NR)
    if arch.x32_bit:
        # The x32 ABI shares AUDIT_ARCH_X86_64 and marks its numbers with this bit.
        native_nr = asm.label()
        asm.jump(_BPF_JSET_K, _X32_SYSCALL_BIT, jf=native_nr)
        asm.ret(_RET_KILL_PROCESS)
        asm.place(native_nr)


# Each argument check below matches one syscall number while A = nr, then loads an argument and
# always returns; a miss jumps past it with A still holding nr. The kernel reads these arguments
# as 32-bit values (int or unsigned int, or lower_32_bits() of clone's flags), so the low word
# is all there is to compare.


def _check_clone(asm: _Assembler, nr: Mapping[str, int]) -> None:
    """clone creating namespaces; plain fork, vfork and threads pass (arg0 is the flags)."""
    miss, allow = asm.label(), asm.label()
    asm.jump(_BPF_JEQ_K, nr["clone"], jf=miss)
    asm.load(_arg_low(0))
    asm.jump(_BPF_JSET_K, _CLONE_NAMESPACE_FLAGS, jf=allow)
    asm.ret(_errno(errno.EPERM))
    asm.place(allow)
    asm.ret(_RET_ALLOW)
    asm.place(miss)


def _check_socket(asm: _Assembler, nr: Mapping[str, int]) -> None:
    """socket and socketpair: AF_UNIX only (arg0 is the domain)."""
    hit, miss, allow = asm.label(), asm.label(), asm.label()
    asm.jump(_BPF_JEQ_K, nr["socket"], jt=hit)
    asm.jump(_BPF_JEQ_K, nr["socketpair"], jf=miss)
    asm.place(hit)
    asm.load(_arg_low(0))
    asm.jump(_BPF_JEQ_K, _AF_UNIX, jt=allow)
    asm.ret(_errno(errno.EAFNOSUPPORT))
    asm.place(allow)
    asm.ret(_RET_ALLOW)
    asm.place(miss)


def _check_ioctl(asm: _Assembler, nr: Mapping[str, int]) -> None:
    """ioctl: no terminal input injection (arg1 is the request)."""
    miss, deny = asm.label(), asm.label()
    asm.jump(_BPF_JEQ_K, nr["ioctl"], jf=miss)
    asm.load(_arg_low(1))
    asm.jump(_BPF_JEQ_K, _TIOCSTI, jt=deny)
    asm.jump(_BPF_JEQ_K, _TIOCLINUX, jt=deny)
    asm.ret(_RET_ALLOW)
    asm.place(deny)
    asm.ret(_errno(errno.EPERM))
    asm.place(miss)


def _check_personality(asm: _Assembler, nr: Mapping[str, int]) -> None:
    """personality: PER_LINUX and the query only (no READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE...)."""
    miss, allow = asm.label(), asm.label()
    asm.jump(_BPF_JEQ_K, nr["personality"], jf=miss)
    asm.load(_arg_low(0))
    asm.jump(_BPF_JEQ_K, _PER_LINUX, jt=allow)
    asm.jump(_BPF_JEQ_K, _PERSONALITY_QUERY, jt=allow)
    asm.ret(_errno(errno.EPERM))
    asm.place(allow)
    asm.ret(_RET_ALLOW)
    asm.place(miss)


def _check_prctl(asm: _Assembler, nr: Mapping[str, int]) -> None:
    """prctl: no way back to dumpable (arg0 is the option)."""
    miss, deny = asm.label(), asm.label()
    asm.jump(_BPF_JEQ_K, nr["prctl"], jf=miss)
    asm.load(_arg_low(0))
    asm.jump(_BPF_JEQ_K, _PR_SET_DUMPABLE, jt=deny)
    asm.ret(_RET_ALLOW)
    asm.place(deny)
    asm.ret(_errno(errno.EPERM))
    asm.place(miss)


def _assemble(arch: _Arch) -> bytes:
    nr = arch.numbers
    asm = _Assembler()
    _check_arch(asm, arch)
    # clone3 first: see _ENOSYS_SYSCALLS.
    _refuse_numbers(asm, sorted(nr[name] for name in _ENOSYS_SYSCALLS), _errno(errno.ENOSYS))
    _check_clone(asm, nr)
    _check_socket(asm, nr)
    _check_ioctl(asm, nr)
    _check_personality(asm, nr)
    _check_prctl(asm, nr)
    # Sorted by number so that the program is the same whatever the string hash seed.
    denied = sorted(nr[name] for name in _EPERM_SYSCALLS if name in nr)
    _refuse_numbers(asm, denied, _errno(errno.EPERM))
    asm.ret(_RET_ALLOW)
    return asm.assemble()


@cache
def _build(machine: str) -> bytes:
    return _assemble(_arch_for(machine))


def build_filter(machine: str | None = None) -> bytes:
    """The packed ``struct sock_filter[]`` for ``machine`` (default: this process's machine).

    A pure function of the machine: the same bytes in every process, ready for
    :func:`install_filter`. Raises :class:`SandboxError` for a machine without a syscall table,
    or (by default) for a 32-bit or big-endian interpreter.
    """
    return _build(_native_arch().machine if machine is None else machine)


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
    count, rest = divmod(len(program), _INSN.size)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise SandboxError(
            f"cannot install a seccomp program of {len(program)} bytes: it must be 1 to "
            f"{_BPF_MAXINSNS} instructions of {_INSN.size} bytes; pass build_filter()'s result"
        )
    seccomp_nr = _native_arch().numbers["seccomp"]

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
        _native_arch()
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
