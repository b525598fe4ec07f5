"""The child side of a spawn: from a fresh fork of the zygote to a sandboxed feature runtime.

Two processes per container. The *outer* one joins the cgroup, unshares every
namespace, has the zygote write its uid map, forks the *inner* one, builds the root
(from host paths it reads only after that fork, so the feature's process never holds
them) and hands it over, then waits and mirrors the inner's exit: the supervisor kills
a container by killing the outer (the inner dies with it through PDEATHSIG, and its PID
namespace with it). The inner one is PID 1 of the new namespace: it pivots into the
root, drops uid and capabilities, applies Landlock and seccomp, measures itself, and
serves. Both
keep the zygote's minimal environment; the container's own comes in its Start message.
The outer one reads its request (the container's name, view, cgroup) from a socket of
its own, the first thing it does: the zygote never decodes it. When the zygote runs in a
root of its own, the outer one first goes back to the host's mount namespace, where its
request's paths lie.

Runs only in freshly forked, single-threaded children; never returns to the zygote.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import resource
import select
import signal
import socket
import traceback
from typing import Final, NoReturn, TypeVar

import msgspec

from capsule._ipc._channel import encode_frame
from capsule._ipc._messages import CHANNEL_FD, NAMESPACES, Failure, SandboxStatus
from capsule._sandbox import _landlock, _seccomp
from capsule._sandbox import _syscalls as sc
from capsule._sandbox._view import DEVICES, ViewPlan, build_root, enter_root
from capsule._spawn._protocol import MAX_DATAGRAM, VIEW_MOUNTED, RootSources, SpawnRequest
from capsule.errors import SandboxError

__all__ = [
    "EXIT_BOOTSTRAP",
    "close_all_but",
    "read_request",
    "reset_signals",
    "return_to_host",
    "run_outer",
]

_Request = TypeVar("_Request")

EXIT_BOOTSTRAP: Final = 70
_FATAL_ERROR: Final = b"Fatal Python error: "  # how faulthandler starts what it writes
_ALL_NAMESPACES: Final = (
    sc.CLONE_NEWUSER
    | sc.CLONE_NEWNS
    | sc.CLONE_NEWPID
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWIPC
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWCGROUP
)
_PR_GET_DUMPABLE: Final = 3
_MEMFD_NOEXEC: Final = "/proc/sys/vm/memfd_noexec"


def _report(channel: int, exc: BaseException) -> None:
    """Tell the supervisor why the sandbox could not be built (best effort, then exit)."""
    message = Failure(
        id=0,
        type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )
    with contextlib.suppress(OSError):
        os.write(channel, encode_frame(message))


def close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def return_to_host(host: int | None) -> None:
    """Join the host's mount namespace (``host``: a descriptor of it, or None when the
    zygote runs in it): the root and working directory become the host's."""
    if host is not None:
        sc.setns(host, sc.CLONE_NEWNS)
        os.close(host)


def read_request(carrier: int, kind: type[_Request], *, keep: bool = False) -> _Request:
    """The next message the supervisor queued on ``carrier`` for this child (closed here,
    unless ``keep``: another follows)."""
    try:
        data = os.read(carrier, MAX_DATAGRAM)
    finally:
        if not keep:
            os.close(carrier)
    if not data:
        raise SandboxError("the supervisor sent no request")
    return msgspec.msgpack.decode(data, type=kind)


def run_outer(
    carrier: int,
    *,
    channel: int,
    go: int,
    unshared: int,
    host: int | None,
    seccomp_program: bytes | None,
) -> NoReturn:
    """The outer process, from the zygote's fork: back in the ``host``'s mount namespace,
    reads its request from ``carrier``, joins its cgroup, waits there until its view is
    mounted (its file-system server starts meanwhile), enters its namespaces, forks the
    inner process, and only then reads where the root is built from (host paths the
    feature's process never holds), builds it in the namespaces they share and hands it
    over; never returns."""
    try:
        reset_signals()
        os.setsid()
        return_to_host(host)
        request = read_request(carrier, SpawnRequest, keep=True)
        close_all_but({channel, go, unshared, carrier})
        for procs in request.cgroup_procs:
            with open(procs, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
        if os.read(carrier, len(VIEW_MOUNTED) + 1) != VIEW_MOUNTED:
            raise SandboxError("the supervisor did not report the container's view mounted")  # noqa: TRY301 - reported below
        os.setgroups([])
        sc.unshare(_ALL_NAMESPACES)
        os.write(unshared, b"u")
        if os.read(go, 1) != b"g":
            raise SandboxError("the zygote did not write the uid map")  # noqa: TRY301 - reported below
        os.close(go)
        os.close(unshared)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        lifeline, held = os.pipe()
        fatal, stderr = os.pipe()  # the inner's fd 2: what faulthandler says as it dies
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inner = os.fork()
        if inner == 0:
            os.close(held)
            os.close(carrier)
            os.close(fatal)
            ours.close()
            _run_inner(request, channel, theirs.detach(), seccomp_program, lifeline, stderr=stderr)
        os.close(stderr)
        os.close(lifeline)
        theirs.close()
        sources = read_request(carrier, RootSources)
        root = build_root(sources.stage, request.view, sources.binds, _become_container_root)
        socket.send_fds(ours, [b"r"], [root])
        os.close(root)
        ours.close()
        os.close(channel)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        sc.drop_capabilities()
    except BaseException as exc:
        _report(channel, exc)
        os._exit(EXIT_BOOTSTRAP)
    _mirror_exit(inner, fatal)


def _first_fatal_error(fd: int) -> bytes | None:
    """Read the inner process's fd 2 until every copy of it is closed (it ended); the
    first fatal error faulthandler named there (``Aborted``, ``Segmentation fault``)."""
    first: bytes | None = None
    tail = b""
    while chunk := os.read(fd, 65536):
        if first is not None:
            continue  # drained only, so the container never blocks writing to it
        data = tail + chunk
        at = data.find(_FATAL_ERROR)
        if at < 0:
            tail = data[-len(_FATAL_ERROR) :]
            continue
        end = data.find(b"\n", at)
        if end < 0:
            tail = data[at : at + 256]  # the rest of the line comes with the next read
            continue
        first = data[at + len(_FATAL_ERROR) : end]
    os.close(fd)
    return first


def _mirror_exit(pid: int, fatal: int) -> NoReturn:
    """Wait for the inner process and end the same way, so the zygote sees its status.

    The inner process is its PID namespace's init, which a signal it sends itself does not
    end: ``abort()`` raises SIGABRT in vain, then ends it with a faulting instruction, a
    SIGSEGV. faulthandler names the SIGABRT first on fd 2, so that one is mirrored."""
    first = _first_fatal_error(fatal)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(EXIT_BOOTSTRAP)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSEGV and first == b"Aborted":
            sig = signal.SIGABRT
        if sig not in {signal.SIGKILL, signal.SIGSTOP}:  # those two have no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _landlock_rules(plan: ViewPlan) -> list[_landlock.PathRule]:
    rules = [
        _landlock.PathRule(
            b.target, execute=b.executable and not b.writable, write=b.writable, refer=b.writable
        )
        for b in plan.binds
    ]
    rules.append(_landlock.PathRule("/tmp", write=True))  # noqa: S108 - the container's own tmpfs
    rules.append(_landlock.PathRule("/proc"))
    for name in DEVICES:
        writable = name in {"null", "zero"}
        rules.append(_landlock.PathRule(f"/dev/{name}", write=writable, ioctl=True))
    return rules


def _apply_limits(request: SpawnRequest) -> None:
    limits = request.rlimits
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize, limits.fsize))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.data, limits.data))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))


def _seal_memfds() -> None:
    """No executable memfds in this PID namespace: code a feature writes there never runs.

    ``vm.memfd_noexec`` is per PID namespace and can only be raised; 2 refuses
    ``memfd_create`` without ``MFD_NOEXEC_SEAL``. Kernels before 6.3 lack it. Written
    through the host's /proc while this process still has the identity that owns it;
    the value applies to the writer's (new) PID namespace.
    """
    with contextlib.suppress(FileNotFoundError), open(_MEMFD_NOEXEC, "w", encoding="ascii") as f:
        f.write("2")


def _become_container_root() -> None:
    """Switch to the uid and gid the namespace's root maps to (capabilities stay, for now)."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _die_with_outer(lifeline: int) -> None:
    """Arm PDEATHSIG (after the last uid change: a uid change disarms it), then make
    sure the outer process did not already die before it was armed."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    readable, _, _ = select.select([lifeline], [], [], 0)
    if readable:  # the write end is closed: the outer process is gone
        os._exit(EXIT_BOOTSTRAP)
    os.close(lifeline)


def _receive_root(handover: int) -> int:
    """The root the outer process built (an ``O_PATH`` descriptor), from ``handover``."""
    with socket.socket(fileno=handover) as sock:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    if not fds:
        raise SandboxError("the outer process could not build the container's root")
    return fds[0]


def _run_inner(
    request: SpawnRequest,
    channel: int,
    handover: int,
    seccomp_program: bytes | None,
    lifeline: int,
    *,
    stderr: int,
) -> NoReturn:
    try:
        os.setsid()
        _seal_memfds()
        root = _receive_root(handover)
        _become_container_root()
        _die_with_outer(lifeline)
        os.fchdir(root)
        os.close(root)
        enter_root()
        socket.sethostname(request.name)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        os.dup2(stderr, 2)  # the outer process reads it: see _mirror_exit
        if channel != CHANNEL_FD:
            os.dup2(channel, CHANNEL_FD)
        close_all_but({0, 1, 2, CHANNEL_FD})
        _apply_limits(request)
        sc.drop_capabilities()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        abi = _landlock.restrict(_landlock_rules(request.view)) if request.landlock else 0
        if seccomp_program is not None and request.seccomp:
            _seccomp.install_filter(seccomp_program)
        status = measure(landlock_abi=abi)
    except BaseException as exc:
        _report(channel, exc)
        os._exit(EXIT_BOOTSTRAP)
    from capsule._container._runtime import serve  # noqa: PLC0415 - imported by the zygote already

    faulthandler.enable(file=2, all_threads=False)  # names the fatal signal for the outer one
    os._exit(serve(CHANNEL_FD, status))


def _status_field(name: str) -> str:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    return ""


def measure(*, landlock_abi: int) -> SandboxStatus:
    """The sandbox as this process sees it from inside (the handshake's first message)."""
    namespaces = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in NAMESPACES}
    with open("/proc/self/uid_map", encoding="ascii") as f:
        uid_map = " ".join(f.read().split())
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    fds = []
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    return SandboxStatus(
        namespaces=namespaces,
        uid_map=uid_map,
        uid=os.getuid(),
        no_new_privs=sc.prctl(sc.PR_GET_NO_NEW_PRIVS) == 1,
        dumpable=sc.prctl(_PR_GET_DUMPABLE) != 0,
        seccomp=int(_status_field("Seccomp") or 0),
        landlock_abi=landlock_abi,
        capabilities=int(_status_field("CapEff") or "0", 16),
        fds=sorted(fds),
        pid=os.getpid(),
    )
