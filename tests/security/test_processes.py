"""THREATS.md "Processes and resources" (items 10-14), attacked from inside real containers.

A container is PID 1 of its own PID namespace with a fresh /proc, runs as a host uid of its own,
is not dumpable, has RLIMIT_CORE 0 and cgroup limits on pids, memory and cpu; the supervisor
signals it only through a pidfd. The attacks below try to reach the supervisor, the zygote and a
sibling container, exhaust resources, race pid reuse, dump core and outlive the container.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio

import capsule
from capsule._supervisor._views import VIEW_SERVER_PIDS
from capsule.feature import Context
from capsule.testing import TestApp, kill, leftovers
from capsule.testing._probes import raw_syscall, syscall32
from tests.security._host import (
    RESTART_AT_ONCE,
    container_host_uid,
    crash_signals,
    descendants,
    needs_x86_64,
    processes_of_uid,
    sandbox_status,
    zygote_pid,
)

_PR_GET_DUMPABLE: Final = 3
_PR_SET_DUMPABLE: Final = 4

# --- run inside the container (shipped by value with the handlers) ----------------------------


def _outcome(action: Callable[[], object]) -> str:
    """``ok`` if ``action`` succeeds, else the errno name of the OSError it raised."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return "ok"


def _sys(nr: int, *args: int) -> str:
    """A raw syscall's outcome: ``ok`` or the errno name."""
    _, err = raw_syscall(nr, *args)
    return errno.errorcode.get(err, f"errno {err}") if err else "ok"


def _attack_processes(request: dict[str, Any]) -> dict[str, str]:
    buffer = ctypes.create_string_buffer(64)
    iovec = (ctypes.c_uint64 * 2)(ctypes.addressof(buffer), 64)
    iov = ctypes.addressof(iovec)
    out: dict[str, str] = {}
    for name, pid in request["pids"].items():
        out[f"{name}: stat /proc/PID"] = _outcome(partial(os.stat, f"/proc/{pid}"))
        out[f"{name}: kill 0"] = _outcome(partial(os.kill, pid, 0))
        out[f"{name}: kill SIGKILL"] = _outcome(partial(os.kill, pid, signal.SIGKILL))
        out[f"{name}: killpg SIGKILL"] = _outcome(partial(os.killpg, pid, signal.SIGKILL))
        out[f"{name}: tgkill"] = _sys(234, pid, pid, signal.SIGKILL)
        out[f"{name}: pidfd_open"] = _outcome(partial(os.pidfd_open, pid))
        out[f"{name}: setpriority"] = _outcome(partial(os.setpriority, os.PRIO_PROCESS, pid, 19))
        out[f"{name}: prlimit"] = _outcome(partial(resource.prlimit, pid, resource.RLIMIT_NOFILE))
        out[f"{name}: sched_getaffinity"] = _outcome(partial(os.sched_getaffinity, pid))
        out[f"{name}: ptrace attach"] = _sys(101, 16, pid, 0, 0)
        out[f"{name}: ptrace seize"] = _sys(101, 0x4206, pid, 0, 0)
        out[f"{name}: process_vm_readv"] = _sys(310, pid, iov, 1, iov, 1, 0)
        out[f"{name}: process_vm_writev"] = _sys(311, pid, iov, 1, iov, 1, 0)
        out[f"{name}: kcmp"] = _sys(312, 1, pid, 0, 0, 0)
    own = os.pidfd_open(1)
    out["kill -1 (everything it may signal)"] = _outcome(partial(os.kill, -1, 0))
    out["ptrace traceme"] = _sys(101, 0, 0, 0, 0)
    out["process_vm_readv on itself"] = _sys(310, 1, iov, 1, iov, 1, 0)
    out["kcmp on itself"] = _sys(312, 1, 1, 0, 3, 3)
    out["pidfd_getfd of its own channel"] = _sys(438, own, 3, 0)
    os.close(own)
    return out


def _probe32(request: list[int]) -> int:
    return syscall32(*request)


def _probe_x32(request: list[int]) -> list[int]:
    return list(raw_syscall(*request))


def _exit_soon(request: dict[str, Any]) -> str:
    threading.Timer(float(request["delay"]), os._exit, (int(request["code"]),)).start()
    return "bye"


def _core_status(_: object) -> dict[str, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[str, Any] = {
        "RLIMIT_CORE": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "PR_GET_DUMPABLE": libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0),
        "owner of /proc/1/mem": os.stat("/proc/1/mem").st_uid,
    }
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (1 << 30, 1 << 30))
    except ValueError as exc:
        out["raise RLIMIT_CORE"] = str(exc)
    else:
        out["raise RLIMIT_CORE"] = "ok"
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (1, 0))
    except ValueError as exc:
        out["soft RLIMIT_CORE above hard"] = str(exc)
    return out


def _make_dumpable(_: object) -> dict[str, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    result = libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    err = ctypes.get_errno()
    return {
        "PR_SET_DUMPABLE 1": "ok" if result == 0 else errno.errorcode.get(err, str(err)),
        "PR_GET_DUMPABLE": libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0),
    }


def _daemonize(_: object) -> int:
    """setsid + double fork: a grandchild that ignores the polite signals; returns its pid."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_IGN)
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            while True:
                time.sleep(3600)
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)  # the grandchild is an orphan now, adopted by PID 1
    with os.fdopen(read_end, "rb") as pipe:
        return int(pipe.read())


def _serve(feature: Any, name: str, attack: Callable[[Any], Any]) -> None:
    """Register ``attack`` (a plain function) as the async service ``name`` of ``feature``."""

    async def service(ctx: Context, request: Any) -> Any:
        return attack(request)

    feature.service(name)(service)


async def _pong(ctx: Context, request: Any) -> str:
    return "pong"


# --- host side -------------------------------------------------------------------------------

#: Runs on the host as a child of the test: creates a process with exactly the pid given in argv
#: (clone3 with set_tid, root only), prints that pid, and on any line from stdin reports whether
#: it is still alive 0.3 s later (a signal sent just before has landed by then), then ends it.
_DECOY: Final = """
import ctypes, os, signal, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
tid = (ctypes.c_int * 1)(int(sys.argv[1]))
args = struct.pack("<11Q", 0, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, ctypes.addressof(tid), 1, 0)
buf = ctypes.create_string_buffer(args, len(args))
pid = libc.syscall(435, buf, len(args))
if pid == 0:
    time.sleep(60)
    os._exit(0)
if pid < 0:
    print("error", ctypes.get_errno(), flush=True)
    sys.exit(0)
print(pid, flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 0.3
while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
    time.sleep(0.01)
print("alive" if time.monotonic() >= deadline else "dead", flush=True)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""


def _wait_until_reaped(pid: int, timeout: float) -> None:
    """Block (the event loop too, on purpose) until host pid ``pid`` is gone from /proc."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"pid {pid} was never reaped"
        time.sleep(0.005)


def _proc_limits(pid: int) -> str:
    return Path(f"/proc/{pid}/limits").read_text(encoding="ascii")


def _gone(uids: list[int], timeout: float = 2.0) -> dict[int, dict[int, list[int]]]:
    """The processes still running as any of ``uids`` once they had ``timeout`` s to die."""
    deadline = time.monotonic() + timeout
    while True:
        left = {uid: found for uid in uids if (found := processes_of_uid(uid))}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def _reap_by_hand(survivors: dict[int, dict[int, list[int]]]) -> None:
    """SIGKILL container processes that outlived their container (the test's own children)."""
    for found in survivors.values():
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_supervisor_zygote_and_sibling_are_out_of_reach(capsule_app: TestApp) -> None:
    """THREATS 10: no seeing, signalling, ptrace, process_vm_*, pidfd_getfd or kcmp of others."""
    attacker = capsule_app.feature("attacker")
    sibling = capsule_app.feature("sibling")
    _serve(attacker, "attack", _attack_processes)
    sibling.service("ping")(_pong)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            own = sup.feature("attacker").instance
            other = sup.feature("sibling").instance
            assert own is not None
            assert other is not None
            pids = {
                "supervisor": os.getpid(),
                "zygote": zygote_pid(),
                "sibling outer": other.pid,
                "sibling inner": descendants(other.pid)[0],
                "own outer": own.pid,
            }
            niceness = os.getpriority(os.PRIO_PROCESS, 0)
            got = await sup.call("attacker", "attack", {"pids": pids})
            assert await sup.call("sibling", "ping") == "pong"
            assert other.ended.is_set() is False
            mine, theirs = sandbox_status(sup, "attacker"), sandbox_status(sup, "sibling")

    expected: dict[str, str] = {}
    for name in pids:
        expected[f"{name}: stat /proc/PID"] = "ENOENT"
        for what in ("kill 0", "kill SIGKILL", "killpg SIGKILL", "tgkill", "pidfd_open"):
            expected[f"{name}: {what}"] = "ESRCH"
        for what in ("setpriority", "prlimit", "sched_getaffinity"):
            expected[f"{name}: {what}"] = "ESRCH"
        for what in ("ptrace attach", "ptrace seize", "process_vm_readv", "process_vm_writev"):
            expected[f"{name}: {what}"] = "EPERM"  # seccomp, before the pid is even looked up
        expected[f"{name}: kcmp"] = "EPERM"
    expected |= {
        "kill -1 (everything it may signal)": "ESRCH",
        "ptrace traceme": "EPERM",
        "process_vm_readv on itself": "EPERM",
        "kcmp on itself": "EPERM",
        "pidfd_getfd of its own channel": "EPERM",
    }
    assert got == expected
    assert os.getpriority(os.PRIO_PROCESS, 0) == niceness
    assert container_host_uid(mine) != container_host_uid(theirs)
    assert mine.namespaces["pid"] != theirs.namespaces["pid"]
    assert mine.namespaces["user"] != theirs.namespaces["user"]
    assert leftovers() == []


@needs_x86_64
@pytest.mark.trio
async def test_process_syscalls_through_other_abis_kill_the_container(
    capsule_app: TestApp,
) -> None:
    """THREATS 10: the 32-bit (int 0x80) and x32 twins of those attacks die by SIGSYS."""
    probe = capsule_app.feature("probe", restart=RESTART_AT_ONCE)
    _serve(probe, "int80", _probe32)
    _serve(probe, "x32", _probe_x32)
    x32 = 0x4000_0000
    supervisor = os.getpid()
    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await crash_signals(
                sup,
                "probe",
                "int80",
                {
                    "ptrace attach": [26, 16, supervisor, 0, 0],
                    "kill": [37, supervisor, 0],
                    "tkill": [238, supervisor, 0],
                    "process_vm_readv": [347, supervisor, 0, 0, 0, 0, 0],
                    "process_vm_writev": [348, supervisor, 0, 0, 0, 0, 0],
                    "kcmp": [349, 1, supervisor, 0, 0, 0],
                    "pidfd_open": [434, supervisor, 0],
                    "pidfd_getfd": [438, 0, 3, 0],
                },
            )
            got |= await crash_signals(
                sup,
                "probe",
                "x32",
                {
                    "x32 ptrace": [x32 | 101, 16, supervisor, 0, 0],
                    "x32 process_vm_readv": [x32 | 310, supervisor, 0, 0, 0, 0, 0],
                },
            )
            alive = await sup.call("probe", "x32", [39])  # getpid, native ABI: still fine

    assert got == dict.fromkeys(got, "SIGSYS")
    assert len(got) == 10
    assert alive == [1, 0]
    assert leftovers() == []


@pytest.mark.trio
async def test_resource_bombs_stay_inside_their_limits(capsule_app: TestApp) -> None:
    """THREATS 11: fork bomb, thread bomb, memory balloon, CPU hog; the rest keeps serving."""
    never = {"policy": "never"}
    capsule_app.feature("forker", limits={"pids": 16}, restart=never)
    capsule_app.feature("threader", limits={"pids": 16}, restart=never)
    capsule_app.feature("eater", limits={"memory": "64MiB"}, restart=never)
    capsule_app.feature("spinner", limits={"cpu": 0.2}, restart=never)
    bystander = capsule_app.feature("bystander")
    bystander.service("ping")(_pong)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            forks = await sup.call("forker", "fault", {"kind": "forkbomb", "limit": 1000})
            forker_pids = sup.statistics().features["forker"].pids_current
            threads = await sup.call("threader", "fault", {"kind": "threadbomb", "limit": 1000})
            assert await sup.call("bystander", "ping") == "pong"

            with pytest.raises(capsule.FeatureCrashedError) as balloon:
                await sup.call("eater", "fault", {"kind": "balloon", "bytes": 1 << 30})
            assert await sup.call("bystander", "ping") == "pong"

            before = sup.statistics().features["spinner"].cpu_usage_ns
            assert before is not None
            latencies: list[float] = []
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(sup.call, "spinner", "fault", {"kind": "spin", "seconds": 0.6})
                )
                for _ in range(10):
                    await trio.sleep(0.05)
                    sent = time.monotonic()
                    assert await sup.call("bystander", "ping") == "pong"
                    latencies.append(time.monotonic() - sent)
            wall = time.monotonic() - started
            after = sup.statistics().features["spinner"].cpu_usage_ns
            assert after is not None

    assert forks["errno"] == errno.EAGAIN
    assert 0 < forks["forked"] < 16
    assert forker_pids is not None
    assert forker_pids <= 16 + VIEW_SERVER_PIDS  # its file-system server's threads too
    assert threads["error"] == "can't start new thread"
    assert 0 < threads["threads"] < 16
    assert balloon.value.signal == signal.SIGKILL
    assert "out of memory" in str(balloon.value)
    # cpu = 0.2 of one core: well under half the wall time even with a period of burst
    assert (after - before) / 1e9 < 0.5 * wall
    assert max(latencies) < 0.25
    assert leftovers() == []


@pytest.mark.trio
async def test_signalling_an_ended_container_never_hits_a_reused_pid(
    capsule_app: TestApp,
) -> None:
    """THREATS 12: the container's pid is reused before the supervisor notices; kill misses it.

    The container exits on its own while the test blocks the event loop, so the supervisor still
    holds the container as running when the zygote has reaped it and a decoy process has taken
    over its pid. Killing the feature then must not touch the decoy.
    """
    victim = capsule_app.feature("victim", restart={"policy": "never"})
    _serve(victim, "exit-soon", _exit_soon)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            instance = sup.feature("victim").instance
            assert instance is not None
            pid = instance.pid
            assert await sup.call("victim", "exit-soon", {"delay": 0.2, "code": 3}) == "bye"
            _wait_until_reaped(pid, timeout=5)  # blocks: the supervisor cannot notice yet
            with subprocess.Popen(  # noqa: ASYNC220 - the loop must stay blocked meanwhile
                [sys.executable, "-I", "-c", _DECOY, str(pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            ) as decoy:
                assert decoy.stdin is not None
                assert decoy.stdout is not None
                taken = decoy.stdout.readline().split()
                if taken[0] == "error":
                    decoy.communicate("\n")
                    pytest.skip(f"pid {pid} was taken before the decoy: errno {taken[1]}")
                assert taken == [str(pid)]
                assert not instance.ended.is_set()  # the supervisor still thinks it runs
                assert kill(sup, "victim", signal.SIGKILL) == pid
                instance.send_signal(signal.SIGTERM)
                report, _ = decoy.communicate("check\n")
            await instance.ended.wait()
            ending = instance.ending

    assert report.split() == ["alive"]
    assert ending is not None
    assert (ending.exit_code, ending.signal) == (3, None)
    assert leftovers() == []


@pytest.mark.trio
async def test_core_dumps_are_disabled(capsule_app: TestApp) -> None:
    """THREATS 13: RLIMIT_CORE 0 (soft and hard, also in the outer process) and not dumpable."""
    probe = capsule_app.feature("probe")
    _serve(probe, "core", _core_status)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            status = sandbox_status(sup, "probe")
            instance = sup.feature("probe").instance
            assert instance is not None
            outer_limits = _proc_limits(instance.pid)
            got = await sup.call("probe", "core")

    assert status.dumpable is False
    assert got == {
        "RLIMIT_CORE": [0, 0],
        "PR_GET_DUMPABLE": 0,
        "owner of /proc/1/mem": 65534,  # not dumpable: owned by the host's root, unmapped here
        "raise RLIMIT_CORE": "not allowed to raise maximum limit",  # EPERM
        "soft RLIMIT_CORE above hard": "current limit exceeds maximum limit",  # EINVAL
    }
    core_line = next(line for line in outer_limits.splitlines() if "core file size" in line)
    assert core_line.split()[4:6] == ["0", "0"]
    assert leftovers() == []


@pytest.mark.trio
async def test_container_cannot_make_itself_dumpable_again(capsule_app: TestApp) -> None:
    """THREATS 13: prctl(PR_SET_DUMPABLE, 1) from inside must be refused."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _make_dumpable)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    assert leftovers() == []
    assert got == {"PR_SET_DUMPABLE 1": "EPERM", "PR_GET_DUMPABLE": 0}


@pytest.mark.trio
async def test_daemons_die_with_their_container(capsule_app: TestApp) -> None:
    """THREATS 14: setsid + double fork, ignoring SIGTERM/SIGHUP: gone once the container is."""
    for name in ("killed", "stopped"):
        _serve(capsule_app.feature(name, restart={"policy": "never"}), "daemonize", _daemonize)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            uids = {name: container_host_uid(sandbox_status(sup, name)) for name in sup.features()}
            daemons = {name: await sup.call(name, "daemonize") for name in uids}
            running = {name: processes_of_uid(uid) for name, uid in uids.items()}
            instance = sup.feature("killed").instance
            assert instance is not None
            kill(sup, "killed", signal.SIGKILL)
            with trio.move_on_after(5):
                await instance.ended.wait()
            survivors = _gone([uids["killed"]])
            _reap_by_hand(survivors)  # so that a failure here fails, instead of hanging the close
            assert survivors == {}
            assert instance.ended.is_set()
        # "stopped" is stopped by the supervisor closing: its PID 1 exits normally

    for name, daemon in daemons.items():
        # the daemon ran on the host under the container's uid, next to the container's PID 1
        assert daemon > 1
        assert any(chain[-1] == daemon and len(chain) == 2 for chain in running[name].values())
        assert any(chain[-1] == 1 for chain in running[name].values())
    assert _gone(list(uids.values())) == {}
    assert leftovers() == []
