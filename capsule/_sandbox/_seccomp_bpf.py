"""The seccomp filter program: a classic-BPF program assembled in Python from the policy tables.

A pure function of the machine, with no I/O; never imports the rest of capsule except
capsule.errors and the seccomp policy beside it. The policy it compiles is described in
:mod:`._seccomp_policy`.

The program is a straight list of short forward jumps. Syscalls whose verdict does not depend on
their arguments only ever load ``nr`` and ``arch``, so the kernel's seccomp action cache
(Linux >= 5.11) can allow them without running the filter at all.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Final

from capsule._sandbox._seccomp_policy import (
    ENOSYS_SYSCALLS,
    EPERM_SYSCALLS,
    Arch,
    arch_for,
    native_arch,
)
from capsule.errors import InternalError

__all__ = [
    "BPF_MAXINSNS",
    "INSN",
    "build_filter",
]

# --- classic BPF (linux/filter.h, linux/bpf_common.h) ----------------------------------------

_BPF_LD_W_ABS: Final = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS: A = u32 at data[k]
_BPF_JEQ_K: Final = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K: A == k ?
_BPF_JSET_K: Final = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K: A & k ?
_BPF_RET_K: Final = 0x06 | 0x00  # BPF_RET | BPF_K: return k
_JUMPS: Final = frozenset({_BPF_JEQ_K, _BPF_JSET_K})

#: struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }, little endian like every
#: machine this module supports.
INSN: Final = struct.Struct("<HBBI")
BPF_MAXINSNS: Final = 4096
_MAX_JUMP: Final = 0xFF

# --- seccomp (linux/seccomp.h) -----------------------------------------------------------------

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_OFF_ARGS: Final = 16

_RET_KILL_PROCESS: Final = 0x8000_0000
_RET_ERRNO: Final = 0x0005_0000
_RET_ALLOW: Final = 0x7FFF_0000

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
        if not 0 < len(self._insns) <= BPF_MAXINSNS:
            raise InternalError(f"seccomp filter has {len(self._insns)} instructions")
        if self._insns[-1].code != _BPF_RET_K:
            raise InternalError("seccomp filter does not end with a return")
        out = bytearray()
        for index, insn in enumerate(self._insns):
            jt = self._offset(index, insn.jt)
            jf = self._offset(index, insn.jf)
            if insn.code not in _JUMPS and (jt or jf):
                raise InternalError(f"seccomp filter: instruction {index} is not a jump")
            out += INSN.pack(insn.code, jt, jf, insn.k)
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


def _check_arch(asm: _Assembler, arch: Arch) -> None:
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


def _assemble(arch: Arch) -> bytes:
    nr = arch.numbers
    asm = _Assembler()
    _check_arch(asm, arch)
    # clone3 first: see ENOSYS_SYSCALLS.
    _refuse_numbers(asm, sorted(nr[name] for name in ENOSYS_SYSCALLS), _errno(errno.ENOSYS))
    _check_clone(asm, nr)
    _check_socket(asm, nr)
    _check_ioctl(asm, nr)
    _check_personality(asm, nr)
    _check_prctl(asm, nr)
    # Sorted by number so that the program is the same whatever the string hash seed.
    denied = sorted(nr[name] for name in EPERM_SYSCALLS if name in nr)
    _refuse_numbers(asm, denied, _errno(errno.EPERM))
    asm.ret(_RET_ALLOW)
    return asm.assemble()


@cache
def _build(machine: str) -> bytes:
    return _assemble(arch_for(machine))


def build_filter(machine: str | None = None) -> bytes:
    """The packed ``struct sock_filter[]`` for ``machine`` (default: this process's machine).

    A pure function of the machine: the same bytes in every process, ready for
    :func:`install_filter`. Raises :class:`SandboxError` for a machine without a syscall table,
    or (by default) for a 32-bit or big-endian interpreter.
    """
    return _build(native_arch().machine if machine is None else machine)
