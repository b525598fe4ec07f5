"""The seccomp filter: its program read back instruction by instruction, and real attacks on it.

Each attack runs in a forked child that installs the real filter, probes the kernel and reports
through a pipe; the parent asserts and always reaps the child.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

from capsule._sandbox._seccomp import available, install_filter, seccomp_mode
from capsule._sandbox._seccomp_bpf import build_filter
from capsule._sandbox._seccomp_policy import (
    ARGUMENT_FILTERED_SYSCALLS,
    DENIED_SYSCALLS,
    SUPPORTED_MACHINES,
    syscall_numbers,
)
from capsule.errors import SandboxError
from capsule.testing._probes import raw_syscall, syscall32

Report = dict[str, Any]

_AVAILABLE, _WHY = available()
needs_seccomp = pytest.mark.skipif(not _AVAILABLE, reason=f"seccomp unavailable: {_WHY}")
x86_64_only = pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the i386 and x32 ABIs exist on x86_64 only"
)
NR: Mapping[str, int] = syscall_numbers() if _AVAILABLE else {}

# --- constants the tests attack with (independent of the module under test) --------------------

SECCOMP_RET_KILL_PROCESS = 0x8000_0000
SECCOMP_RET_ERRNO = 0x0005_0000
SECCOMP_RET_ALLOW = 0x7FFF_0000
AUDIT_ARCH = {"x86_64": 0xC000_003E, "aarch64": 0xC000_00B7}
AUDIT_ARCH_I386 = 0x4000_0003
AUDIT_ARCH_ARM = 0x4000_0028

CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_VFORK = 0x4000
CLONE_THREAD = 0x10000
CLONE_SYSVSEM = 0x40000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_CHILD_SETTID = 0x0100_0000
NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x80,
    "CLONE_NEWNS": 0x0002_0000,
    "CLONE_NEWCGROUP": 0x0200_0000,
    "CLONE_NEWUTS": 0x0400_0000,
    "CLONE_NEWIPC": 0x0800_0000,
    "CLONE_NEWUSER": 0x1000_0000,
    "CLONE_NEWPID": 0x2000_0000,
    "CLONE_NEWNET": 0x4000_0000,
}
AF_NETLINK = 16
AF_PACKET = 17
SOCK_STREAM = 1
SOCK_RAW = 3
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
TIOCGWINSZ = 0x5413
PER_LINUX32 = 0x0008
ADDR_NO_RANDOMIZE = 0x0004_0000
PR_SET_DUMPABLE = 4
X32_BIT = 0x4000_0000
I386_GETPID = 20
X86_64_GETPID = 39

# --- a classic-BPF interpreter for reading the program back ------------------------------------

LD_W_ABS, JEQ_K, JSET_K, RET_K = 0x20, 0x15, 0x45, 0x06
SECCOMP_DATA_SIZE = 64


def _decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("<HBBI", program, at) for at in range(0, len(program), 8)]


def _run_bpf(
    program: bytes, *, machine: str, nr: int, args: tuple[int, ...] = (), arch: int = 0
) -> int:
    """The action the program returns for one syscall."""
    full_args = (*args, 0, 0, 0, 0, 0, 0)[:6]
    data = struct.pack("<II Q 6Q", nr & 0xFFFF_FFFF, arch or AUDIT_ARCH[machine], 0, *full_args)
    insns = _decode(program)
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code == JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == JSET_K:
            pc += 1 + (jt if acc & k else jf)
        elif code == RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc}")


def _eperm() -> int:
    return SECCOMP_RET_ERRNO | errno.EPERM


# --- running a probe in a forked child ----------------------------------------------------------


def _child(
    probe: Callable[[], Report], write_fd: int, *, install: bool, dumpable: bool
) -> NoReturn:
    code = 0
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if not dumpable:
            ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        if install:
            install_filter(build_filter())
        payload: Report = {"ok": probe()}
    except BaseException:
        payload = {"error": traceback.format_exc()}
        code = 1
    try:
        data = json.dumps(payload).encode()
        while data:
            data = data[os.write(write_fd, data) :]
    finally:
        os._exit(code)


def _in_child(
    probe: Callable[[], Report],
    *,
    install: bool = True,
    dumpable: bool = True,
    timeout: float = 10.0,
) -> tuple[int, Report | None]:
    """Run ``probe`` in a forked child; return its wait status and its report, if any."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(probe, write_fd, install=install, dumpable=dumpable)
    os.close(write_fd)
    chunks: list[bytes] = []
    timed_out = False
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(left, 0))
            if not ready:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert not timed_out, f"the probe child did not finish within {timeout}s"
    if not chunks:
        return status, None
    payload = json.loads(b"".join(chunks))
    if "error" in payload:
        pytest.fail(f"the probe child failed:\n{payload['error']}")
    return status, payload["ok"]


def _report(probe: Callable[[], Report], *, install: bool = True) -> Report:
    status, report = _in_child(probe, install=install)
    assert os.WIFEXITED(status), f"probe child ended with wait status {status:#x}"
    assert os.WEXITSTATUS(status) == 0
    assert report is not None
    return report


def _killed_by(status: int) -> str:
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


# --- the program itself -------------------------------------------------------------------------


@pytest.mark.parametrize("machine", sorted(SUPPORTED_MACHINES))
def test_program_is_deterministic_well_formed_and_short(machine: str) -> None:
    program = build_filter(machine)
    assert isinstance(program, bytes)
    assert program == build_filter(machine)
    assert len(program) % 8 == 0
    insns = _decode(program)
    assert 0 < len(insns) <= 4096
    assert insns[-1][0] == RET_K
    for index, (code, jt, jf, k) in enumerate(insns):
        assert code in {LD_W_ABS, JEQ_K, JSET_K, RET_K}, index
        if code == LD_W_ABS:
            assert k % 4 == 0, index
            assert k < SECCOMP_DATA_SIZE, index
        if code in {JEQ_K, JSET_K}:
            assert index + 1 + max(jt, jf) < len(insns), index
        else:
            assert jt == jf == 0, index


def test_native_program_is_the_machines_program() -> None:
    if os.uname().machine not in SUPPORTED_MACHINES:
        with pytest.raises(SandboxError, match=re.escape(os.uname().machine)):
            build_filter()
    else:
        assert build_filter() == build_filter(os.uname().machine)


def test_program_is_the_same_in_every_process() -> None:
    code = (
        "import sys; from capsule._sandbox._seccomp_bpf import build_filter; "
        "sys.stdout.write(''.join(build_filter(m).hex() for m in ('x86_64', 'aarch64')))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=True, timeout=60
        )
        outputs.add(done.stdout)
    assert outputs == {(build_filter("x86_64") + build_filter("aarch64")).hex().encode()}


def test_unsupported_machine_is_named() -> None:
    with pytest.raises(SandboxError, match="riscv64"):
        build_filter("riscv64")
    with pytest.raises(SandboxError, match="riscv64"):
        syscall_numbers("riscv64")


@pytest.mark.parametrize("machine", sorted(SUPPORTED_MACHINES))
def test_program_refuses_every_denied_syscall(machine: str) -> None:
    program = build_filter(machine)
    numbers = syscall_numbers(machine)
    assert numbers.keys() >= ARGUMENT_FILTERED_SYSCALLS
    assert "clone3" in DENIED_SYSCALLS
    for name in sorted(DENIED_SYSCALLS & numbers.keys()):
        expected = SECCOMP_RET_ERRNO | (errno.ENOSYS if name == "clone3" else errno.EPERM)
        action = _run_bpf(program, machine=machine, nr=numbers[name])
        assert action == expected, name
    refused = {
        numbers[name] for name in DENIED_SYSCALLS | ARGUMENT_FILTERED_SYSCALLS if name in numbers
    }
    for nr in range(600):
        if nr not in refused:
            assert _run_bpf(program, machine=machine, nr=nr) == SECCOMP_RET_ALLOW, nr


def test_x86_64_table_has_the_x86_only_names() -> None:
    numbers = syscall_numbers("x86_64")
    for name in ("modify_ldt", "iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl"):
        assert name in DENIED_SYSCALLS
        assert name in numbers


@pytest.mark.parametrize("machine", sorted(SUPPORTED_MACHINES))
def test_program_kills_foreign_abis(machine: str) -> None:
    program = build_filter(machine)
    getpid = {"x86_64": X86_64_GETPID, "aarch64": 172}[machine]
    for arch in (AUDIT_ARCH_I386, AUDIT_ARCH_ARM, *AUDIT_ARCH.values()):
        if arch == AUDIT_ARCH[machine]:
            continue
        action = _run_bpf(program, machine=machine, nr=getpid, arch=arch)
        assert action == SECCOMP_RET_KILL_PROCESS, hex(arch)
    if machine == "x86_64":
        for nr in (X32_BIT | X86_64_GETPID, X32_BIT | 0, 0xFFFF_FFFF):
            assert _run_bpf(program, machine=machine, nr=nr) == SECCOMP_RET_KILL_PROCESS, nr


@pytest.mark.parametrize("machine", sorted(SUPPORTED_MACHINES))
def test_program_checks_arguments(machine: str) -> None:
    program = build_filter(machine)
    nr = syscall_numbers(machine)

    def action(name: str, *args: int) -> int:
        return _run_bpf(program, machine=machine, nr=nr[name], args=args)

    for flag, value in NAMESPACE_FLAGS.items():
        assert action("clone", value | signal.SIGCHLD) == _eperm(), flag
    thread_flags = (
        CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
        | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID
    )  # fmt: skip
    for flags in (
        signal.SIGCHLD,
        CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | signal.SIGCHLD,
        CLONE_VM | CLONE_VFORK | signal.SIGCHLD,
        thread_flags,
        (0xFFFF_FFFF << 32) | signal.SIGCHLD,  # the kernel ignores the high word of the flags
    ):
        assert action("clone", flags) == SECCOMP_RET_ALLOW, hex(flags)

    for syscall in ("socket", "socketpair"):
        assert action(syscall, socket.AF_UNIX, SOCK_STREAM) == SECCOMP_RET_ALLOW
        for domain in (socket.AF_INET, socket.AF_INET6, AF_NETLINK, AF_PACKET, 0, 0xFFFF_FFFF):
            assert action(syscall, domain) == SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT, domain

    for request in (TIOCSTI, TIOCLINUX, (1 << 32) | TIOCSTI, (0xFFFF << 48) | TIOCLINUX):
        assert action("ioctl", 0, request) == _eperm(), hex(request)
    for request in (TIOCGWINSZ, termios.TCGETS, termios.FIONREAD, TIOCSTI << 32):
        assert action("ioctl", 0, request) == SECCOMP_RET_ALLOW, hex(request)

    for persona in (0, 0xFFFF_FFFF):
        assert action("personality", persona) == SECCOMP_RET_ALLOW, persona
    for persona in (PER_LINUX32, ADDR_NO_RANDOMIZE, 0x0040_0000, 0xFFFF_FFFE):
        assert action("personality", persona) == _eperm(), persona


_HEADERS = {
    "x86_64": (
        Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        Path("/usr/include/asm/unistd_64.h"),
    ),
    "aarch64": (Path("/usr/include/asm-generic/unistd.h"),),
}


@pytest.mark.parametrize("machine", sorted(SUPPORTED_MACHINES))
def test_syscall_table_matches_the_kernel_headers(machine: str) -> None:
    header = next((path for path in _HEADERS[machine] if path.is_file()), None)
    if header is None:
        pytest.skip(f"no kernel headers for {machine}")
    defined = {
        name: int(number)
        for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)", header.read_text())
    }
    numbers = syscall_numbers(machine)
    compared = [name for name in numbers if name in defined]
    assert len(compared) >= len(numbers) - 2  # headers may predate the newest syscalls
    for name in compared:
        assert numbers[name] == defined[name], name


def test_install_rejects_malformed_programs() -> None:
    def probe() -> Report:
        before = seccomp_mode()
        messages = []
        for program in (b"", b"\x06" * 7, b"\0" * 8 * 4097):
            try:
                install_filter(program)
            except SandboxError as exc:
                messages.append(str(exc))
        return {"messages": messages, "unchanged": seccomp_mode() == before}

    report = _report(probe, install=False)
    assert len(report["messages"]) == 3
    assert all("build_filter()" in message for message in report["messages"])
    assert report["unchanged"] is True


# --- the installed filter -----------------------------------------------------------------------


@needs_seccomp
def test_available_reports_no_reason() -> None:
    assert available() == (True, "")


@needs_seccomp
def test_install_sets_filter_mode_and_no_new_privs() -> None:
    def probe() -> Report:
        install_filter(build_filter())  # a second filter stacks
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return {
            "mode": seccomp_mode(),
            "nnp": fields["NoNewPrivs"].strip(),
            "filters": fields.get("Seccomp_filters", "2").strip(),
        }

    report = _report(probe)
    assert report["mode"] == 2
    assert report["nnp"] == "1"
    assert int(report["filters"]) >= 2


def _denied_probes() -> dict[str, tuple[int, ...]]:
    """Harmless calls (bad pointers, fd -1, no-op flags): unfiltered, they never cause harm."""
    pid = os.getpid()
    return {
        "mount": (0, 0, 0, 0, 0),
        "umount2": (0, 0),
        "pivot_root": (0, 0),
        "chroot": (0,),
        "fsopen": (0, 0),
        "open_tree": (0xFFFF_FFFF, 0, 0),
        "move_mount": (0xFFFF_FFFF, 0, 0xFFFF_FFFF, 0, 0),
        "unshare": (0,),
        "setns": (0xFFFF_FFFF, 0),
        "ptrace": (2, 0x3FFF_FFFF, 0, 0),  # PTRACE_PEEKDATA on no such pid
        "process_vm_readv": (pid, 0, 0, 0, 0, 0),
        "process_vm_writev": (pid, 0, 0, 0, 0, 0),
        "pidfd_getfd": (0xFFFF_FFFF, 0, 0),
        "kcmp": (pid, pid, 0, 0, 0),
        "keyctl": (0, 0xFFFF_FFFD, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
        "add_key": (0, 0, 0, 0, 0),
        "bpf": (0, 0, 0),
        "io_uring_setup": (1, 0),
        "userfaultfd": (0,),
        "perf_event_open": (0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF, 0),
        "name_to_handle_at": (0xFFFF_FFFF, 0, 0, 0, 0),
        "open_by_handle_at": (0xFFFF_FFFF, 0, 0),
    }


def _run_probes(probes: Mapping[str, tuple[int, ...]]) -> Report:
    return {name: raw_syscall(NR[name], *args) for name, args in probes.items()}


@needs_seccomp
def test_denied_syscalls_fail_with_eperm() -> None:
    probes = _denied_probes()
    assert probes.keys() <= DENIED_SYSCALLS
    report = _report(lambda: _run_probes(probes))
    failed = {name: result for name, result in report.items() if result != [-1, errno.EPERM]}
    assert not failed


@needs_seccomp
def test_probes_reach_the_kernel_without_the_filter() -> None:
    def probe() -> Report:
        report = _run_probes(
            {
                "unshare": (0,),
                "setns": (0xFFFF_FFFF, 0),
                "pidfd_getfd": (0xFFFF_FFFF, 0, 0),
                "process_vm_readv": (os.getpid(), 0, 0, 0, 0, 0),
                "clone3": (0, 0),
                "socket": (socket.AF_INET, SOCK_STREAM, 0),
            }
        )
        report["getpid"] = os.getpid()
        return report

    report = _report(probe, install=False)
    assert report["unshare"] == [0, 0]
    assert report["setns"] == [-1, errno.EBADF]
    assert report["pidfd_getfd"] == [-1, errno.EBADF]
    assert report["process_vm_readv"] == [0, 0]
    assert report["clone3"][1] != errno.ENOSYS
    assert report["socket"][1] != errno.EAFNOSUPPORT


@needs_seccomp
def test_clone_with_namespace_flags_is_refused_but_fork_threads_and_exec_work() -> None:
    def raw_clone(flags: int) -> list[int]:
        result, err = raw_syscall(NR["clone"], flags, 0, 0, 0, 0)
        if result == 0:  # the new process, had the filter let it through
            os._exit(0)
        if result > 0:
            os.waitpid(result, 0)
        return [result, err]

    def probe() -> Report:
        refused = {
            name: raw_clone(flag | signal.SIGCHLD)
            for name, flag in NAMESPACE_FLAGS.items()
            if name != "CLONE_NEWTIME"
        }
        plain = raw_clone(signal.SIGCHLD)

        child = os.fork()
        if child == 0:
            os._exit(7)
        _, status = os.waitpid(child, 0)

        ran: list[str] = []
        thread = threading.Thread(target=lambda: ran.append(threading.current_thread().name))
        thread.start()
        thread.join(5)

        true = shutil.which("true")
        exec_code = subprocess.run([true], check=False).returncode if true else 0
        return {
            "refused": refused,
            "plain": plain,
            "fork_exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1,
            "thread_ran": ran == [thread.name],
            "exec": exec_code,
        }

    report = _report(probe)
    assert report["refused"] == {
        name: [-1, errno.EPERM] for name in NAMESPACE_FLAGS if name != "CLONE_NEWTIME"
    }
    assert report["plain"][0] > 0
    assert report["fork_exit"] == 7
    assert report["thread_ran"] is True
    assert report["exec"] == 0


@needs_seccomp
def test_clone3_fails_with_enosys() -> None:
    report = _report(lambda: {"clone3": raw_syscall(NR["clone3"], 0, 0)})
    assert report["clone3"] == [-1, errno.ENOSYS]


@needs_seccomp
def test_only_unix_sockets_open() -> None:
    def probe() -> Report:
        report: Report = {}
        for name, domain, kind in (
            ("inet", socket.AF_INET, SOCK_STREAM),
            ("inet6", socket.AF_INET6, SOCK_STREAM),
            ("netlink", AF_NETLINK, SOCK_RAW),
            ("packet", AF_PACKET, SOCK_RAW),
        ):
            report[name] = raw_syscall(NR["socket"], domain, kind, 0)
        report["inet_pair"] = raw_syscall(NR["socketpair"], socket.AF_INET, SOCK_STREAM, 0, 0)
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        except OSError as exc:
            report["python_inet"] = exc.errno
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
            report["unix"] = unix.fileno() >= 0
        left, right = socket.socketpair()
        with left, right:
            left.sendall(b"ping")
            report["pair"] = right.recv(4).decode()
        return report

    report = _report(probe)
    for name in ("inet", "inet6", "netlink", "packet", "inet_pair"):
        assert report[name] == [-1, errno.EAFNOSUPPORT], name
    assert report["python_inet"] == errno.EAFNOSUPPORT
    assert report["unix"] is True
    assert report["pair"] == "ping"


@needs_seccomp
def test_terminal_injection_is_refused_other_ioctls_work() -> None:
    def probe() -> Report:
        report: Report = {}
        primary, secondary = os.openpty()
        try:
            try:
                fcntl.ioctl(secondary, TIOCSTI, b"x")
            except OSError as exc:
                report["tiocsti"] = exc.errno
            report["tioclinux"] = raw_syscall(NR["ioctl"], secondary, TIOCLINUX, 0)
            report["tiocsti_high"] = raw_syscall(NR["ioctl"], secondary, (1 << 32) | TIOCSTI, 0)
            size = fcntl.ioctl(secondary, TIOCGWINSZ, b"\0" * 8)
            report["winsize"] = len(size)
        finally:
            os.close(primary)
            os.close(secondary)
        return report

    report = _report(probe)
    assert report["tiocsti"] == errno.EPERM
    assert report["tioclinux"] == [-1, errno.EPERM]
    assert report["tiocsti_high"] == [-1, errno.EPERM]
    assert report["winsize"] == 8


@needs_seccomp
def test_personality_can_only_be_queried() -> None:
    def probe() -> Report:
        return {
            "linux32": raw_syscall(NR["personality"], PER_LINUX32),
            "no_aslr": raw_syscall(NR["personality"], ADDR_NO_RANDOMIZE),
            "query": raw_syscall(NR["personality"], 0xFFFF_FFFF),
            "linux": raw_syscall(NR["personality"], 0),
        }

    report = _report(probe)
    assert report["linux32"] == [-1, errno.EPERM]
    assert report["no_aslr"] == [-1, errno.EPERM]
    assert report["query"][0] >= 0
    assert report["query"][1] == 0
    assert report["linux"][1] == 0


def _int80_available() -> bool:
    _, report = _in_child(
        lambda: {"pid": syscall32(I386_GETPID), "real": os.getpid()}, install=False, dumpable=False
    )
    return report is not None and report["pid"] == report["real"]


@needs_seccomp
@x86_64_only
def test_int80_syscall_is_killed_with_sigsys() -> None:
    if not _int80_available():
        pytest.skip("the kernel runs no i386 syscalls (IA-32 emulation off)")

    status, report = _in_child(lambda: {"returned": syscall32(I386_GETPID)}, dumpable=False)
    assert report is None, report
    assert os.WIFSIGNALED(status), _killed_by(status)
    assert os.WTERMSIG(status) == signal.SIGSYS


@needs_seccomp
@x86_64_only
def test_x32_syscall_is_killed_with_sigsys() -> None:
    nr = X32_BIT | X86_64_GETPID
    unfiltered = _report(lambda: {"x32": raw_syscall(nr)}, install=False)
    assert unfiltered["x32"][0] != -1 or unfiltered["x32"][1] == errno.ENOSYS

    status, report = _in_child(lambda: {"returned": raw_syscall(nr)}, dumpable=False)
    assert report is None, report
    assert os.WIFSIGNALED(status), _killed_by(status)
    assert os.WTERMSIG(status) == signal.SIGSYS
