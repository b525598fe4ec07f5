"""Attacks a test runs from inside a container: raw syscalls through the native and 32-bit ABIs,
and running a binary the container wrote.

Never imported by the runtime itself. Probes report what the kernel answered instead of raising.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from functools import cache
from typing import Final

__all__ = ["exec_outcome", "raw_syscall", "syscall32", "tiny_elf"]

_MAX_ARGS: Final = 6
_U32: Final = 0xFFFF_FFFF
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF

_PROT_READ: Final = 0x1
_PROT_WRITE: Final = 0x2
_PROT_EXEC: Final = 0x4
_MAP_PRIVATE: Final = 0x02
_MAP_ANONYMOUS: Final = 0x20
_MAP_FAILED: Final = _U64
_PAGE: Final = 4096

# int32 syscall32(const uint32 regs[7]): regs = nr, then the six arguments in i386 order.
_INT80_TRAMPOLINE: Final = bytes(
    [
        0x53,  # push rbx                (callee-saved, holds arg 1)
        0x55,  # push rbp                (callee-saved, holds arg 6)
        0x8B, 0x07,  # mov eax, [rdi]        nr
        0x8B, 0x5F, 0x04,  # mov ebx, [rdi+4]
        0x8B, 0x4F, 0x08,  # mov ecx, [rdi+8]
        0x8B, 0x57, 0x0C,  # mov edx, [rdi+12]
        0x8B, 0x77, 0x10,  # mov esi, [rdi+16]
        0x8B, 0x6F, 0x18,  # mov ebp, [rdi+24]
        0x8B, 0x7F, 0x14,  # mov edi, [rdi+20]    last: it overwrites the pointer
        0xCD, 0x80,  # int 0x80
        0x5D,  # pop rbp
        0x5B,  # pop rbx
        0xC3,  # ret
    ]
)  # fmt: skip


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.mprotect.restype = ctypes.c_int
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


def _signed(value: int, mask: int) -> int:
    value &= mask
    sign = (mask >> 1) + 1
    return value - (mask + 1) if value & sign else value


def _check_args(args: tuple[int, ...]) -> None:
    if len(args) > _MAX_ARGS:
        raise ValueError(f"a syscall takes at most {_MAX_ARGS} arguments, got {len(args)}")


def raw_syscall(nr: int, *args: int) -> tuple[int, int]:
    """Call ``syscall(nr, *args)`` through libc; return (result, errno), errno 0 on success.

    Arguments are truncated to 64 bits; missing ones are passed as 0.
    """
    _check_args(args)
    words = [ctypes.c_long(_signed(arg, _U64)) for arg in (*args, 0, 0, 0, 0, 0, 0)[:_MAX_ARGS]]
    ctypes.set_errno(0)
    result: int = _libc().syscall(ctypes.c_long(_signed(nr, _U64)), *words)
    return result, (ctypes.get_errno() if result == -1 else 0)


def syscall32(nr: int, *args: int) -> int:
    """Issue syscall ``nr`` through the i386 ABI (``int 0x80``); return ``eax`` as signed.

    A non-negative result, or ``-errno``. Arguments are truncated to 32 bits. Only on x86_64
    with a 64-bit interpreter; elsewhere raises ``OSError(ENOSYS)``. Under capsule's seccomp
    filter the process is killed with SIGSYS before this returns; on a kernel without IA-32
    emulation ``int 0x80`` faults and the process gets SIGSEGV.
    """
    _check_args(args)
    if os.uname().machine != "x86_64" or struct.calcsize("P") != 8:
        raise OSError(errno.ENOSYS, "int 0x80 probes need x86_64 and a 64-bit Python")
    regs = (ctypes.c_uint32 * (1 + _MAX_ARGS))(
        *(value & _U32 for value in (nr, *args, 0, 0, 0, 0, 0, 0)[: 1 + _MAX_ARGS])
    )
    libc = _libc()
    ctypes.set_errno(0)
    page: int | None = libc.mmap(
        None, _PAGE, _PROT_READ | _PROT_WRITE, _MAP_PRIVATE | _MAP_ANONYMOUS, -1, 0
    )
    if page is None or page == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, f"mmap for the int 0x80 trampoline: {os.strerror(code)}")
    try:
        ctypes.memmove(page, _INT80_TRAMPOLINE, len(_INT80_TRAMPOLINE))
        if libc.mprotect(page, _PAGE, _PROT_READ | _PROT_EXEC) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"mprotect of the int 0x80 trampoline: {os.strerror(code)}")
        trampoline = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(page)
        result: int = trampoline(ctypes.addressof(regs))
    finally:
        libc.munmap(page, _PAGE)
    return result


def tiny_elf(status: int) -> bytes:
    """A static x86_64 ELF executable that only calls ``exit(status)`` (no interpreter)."""
    code = b"\xbf" + struct.pack("<I", status) + b"\xb8\x3c\x00\x00\x00\x0f\x05"
    base, header, program_header = 0x400000, 64, 56
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    entry = base + header + program_header
    elf = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, header, 0, 0, header, program_header, 1, 0, 0, 0
    )
    size = header + program_header + len(code)
    elf += struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return elf + code


def exec_outcome(target: str | int) -> str:
    """Exec ``target`` (a path or an fd) in a child: ``exit N`` if it ran, else the errno name."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(target, ["probe"], {})  # noqa: S606 - the exec is the attack
        except OSError as exc:
            os._exit(100 + (exc.errno or 0))
        os._exit(99)  # pragma: no cover - execve does not return
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code >= 100:
        return errno.errorcode.get(code - 100, f"errno {code - 100}")
    return f"exit {code}"
