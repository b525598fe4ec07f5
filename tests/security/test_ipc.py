"""THREATS.md "IPC, sockets, descriptors" (items 15-18), attacked from inside real containers.

A container starts with exactly /dev/null on 0, 1, 2 and its channel on 3; it has its own network
and IPC namespaces (abstract unix sockets, SysV IPC and POSIX message queues of the host or of a
sibling are not there), no /dev/shm, no terminal, and a seccomp filter that refuses terminal
injection and the kernel interfaces a feature never needs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import socket
import stat
import struct
import termios
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from capsule.feature import Context
from capsule.testing import TestApp, leftovers
from capsule.testing._probes import raw_syscall, syscall32
from tests.security._host import RESTART_AT_ONCE, crash_signals, needs_x86_64, sandbox_status

_IPC_CREAT: Final = 0o1000
_IPC_RMID: Final = 0
_TIOCSTI: Final = 0x5412
_TIOCLINUX: Final = 0x541C
_TIOCSCTTY: Final = 0x540E
_NAMESPACE_FLAGS: Final = {
    "user": 0x1000_0000,
    "mnt": 0x0002_0000,
    "pid": 0x2000_0000,
    "net": 0x4000_0000,
    "ipc": 0x0800_0000,
    "uts": 0x0400_0000,
    "cgroup": 0x0200_0000,
}
_CLONE_NEWTIME: Final = 0x80
_SIGCHLD: Final = 17
#: POSIX shared memory's directory on the host (there is none in a container).
_DEV_SHM: Final = "/dev/shm"  # noqa: S108

#: sockets a service keeps open between calls (one process per container, so per container).
_HELD: list[socket.socket] = []

# --- run inside the container (shipped by value with the handlers) ----------------------------


def _outcome(action: Callable[[], object]) -> str:
    """``ok`` if ``action`` succeeds, else the errno name of the OSError it raised."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return "ok"


def _sys(nr: int, *args: int) -> str:
    """A raw syscall's outcome: ``ok`` or the errno name (a child it forks exits at once)."""
    result, err = raw_syscall(nr, *args)
    if err:
        return errno.errorcode.get(err, f"errno {err}")
    if nr in {56, 435}:  # clone, clone3: it worked, so this may be the child
        if result == 0:
            os._exit(0)
        os.waitpid(result, 0)
    return "ok"


def _libc_call(name: str, *args: Any) -> str:
    """A libc function returning -1 on error: ``ok`` or the errno name."""
    function = getattr(ctypes.CDLL(None, use_errno=True), name)
    ctypes.set_errno(0)
    if function(*args) == -1:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    return "ok"


def _address(buffer: ctypes.Array[Any]) -> int:
    return ctypes.addressof(buffer)


def _socket_inodes_of_this_netns() -> set[int]:
    with open("/proc/net/unix", encoding="ascii") as file:
        next(file)
        return {int(line.split()[6]) for line in file if len(line.split()) >= 7}


def _describe_fd(fd: int, here: set[int]) -> dict[str, Any]:
    link = os.readlink(f"/proc/self/fd/{fd}")
    info = os.fstat(fd)
    entry: dict[str, Any] = {"fd": fd, "link": link}
    if stat.S_ISCHR(info.st_mode):
        entry["rdev"] = [os.major(info.st_rdev), os.minor(info.st_rdev)]
    if stat.S_ISSOCK(info.st_mode):
        sock = socket.socket(fileno=os.dup(fd))
        with sock:
            entry["family"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            entry["type"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            peer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            entry["peer pid"] = struct.unpack("3i", peer)[0]
        entry["made in this netns"] = info.st_ino in here
    return entry


def _census(_: object) -> list[dict[str, Any]]:
    """Every open descriptor but the one used to list them."""
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fds = sorted(int(name) for name in os.listdir(listing) if int(name) != listing)
    finally:
        os.close(listing)
    here = _socket_inodes_of_this_netns()
    census = []
    for fd in fds:
        try:
            census.append(_describe_fd(fd, here))
        except FileNotFoundError:
            continue  # the duplicate listdir() made of the listing descriptor, closed since
    return census


def _listen_abstract(request: dict[str, Any]) -> str:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + request["name"])
    sock.listen()
    _HELD.append(sock)
    libc = ctypes.CDLL(None, use_errno=True)
    segment = libc.shmget(request["shm key"], 4096, _IPC_CREAT | 0o666)
    return "ok" if segment >= 0 else errno.errorcode[ctypes.get_errno()]


def _connect_abstract(name: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect("\0" + name)


def _sysvipc_keys(kind: str) -> list[int]:
    with open(f"/proc/sysvipc/{kind}", encoding="ascii") as file:
        next(file)
        return [int(line.split()[0]) for line in file if line.strip()]


def _attack_ipc(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connect host abstract socket": _outcome(partial(_connect_abstract, request["host"])),
        "connect sibling abstract socket": _outcome(partial(_connect_abstract, request["sibling"])),
    }
    own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with own:
        own.bind("\0" + request["own"])
        own.listen()
        out["control: connect own abstract socket"] = _outcome(
            partial(_connect_abstract, request["own"])
        )
    for name, key in request["keys"].items():
        out[f"shmget {name}"] = _libc_call("shmget", key, 0, 0)
        out[f"msgget {name}"] = _libc_call("msgget", key, 0)
        out[f"semget {name}"] = _libc_call("semget", key, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    segment = libc.shmget(request["own key"], 4096, _IPC_CREAT | 0o600)
    out["control: shmget own key"] = "ok" if segment >= 0 else "failed"
    out["SysV shm keys seen"] = _sysvipc_keys("shm")
    out["SysV msg keys seen"] = _sysvipc_keys("msg")
    out["SysV sem keys seen"] = _sysvipc_keys("sem")
    libc.shmctl(segment, _IPC_RMID, None)
    shm_name = request["posix shm"].encode()
    out["open /dev/shm/NAME"] = _outcome(
        partial(os.open, f"{_DEV_SHM}/{request['posix shm']}", os.O_RDWR)
    )
    out["shm_open NAME"] = _libc_call("shm_open", shm_name, os.O_RDWR, 0)
    out["mq_open NAME"] = _libc_call("mq_open", request["mqueue"].encode(), os.O_RDWR)
    return out


def _ioctl(fd: int, request: int, argument: bytes = b"\0" * 64) -> None:
    fcntl.ioctl(fd, request, argument)


def _attack_terminal(_: object) -> dict[str, Any]:
    character = ctypes.create_string_buffer(b"x")
    paste = ctypes.create_string_buffer(b"\x03" + bytes(31))  # TIOCL_PASTESEL
    out: dict[str, Any] = {
        "openpty": _outcome(os.openpty),
        "open /dev/tty": _outcome(partial(os.open, "/dev/tty", os.O_RDWR)),
        "open /dev/ptmx": _outcome(partial(os.open, "/dev/ptmx", os.O_RDWR)),
        "open /dev/console": _outcome(partial(os.open, "/dev/console", os.O_RDWR)),
        "session id": os.getsid(0),
        "pid": os.getpid(),
    }
    with open("/proc/self/stat", encoding="ascii") as file:
        out["tty_nr"] = int(file.read().rpartition(")")[2].split()[4])
    for fd in (0, 1, 2, 3):
        out[f"TIOCSTI on fd {fd}"] = _outcome(partial(_ioctl, fd, _TIOCSTI, b"x"))
        out[f"TIOCLINUX on fd {fd}"] = _outcome(partial(_ioctl, fd, _TIOCLINUX, paste.raw))
    out["TIOCSTI with high request bits"] = _sys(16, 0, _TIOCSTI | 1 << 32, _address(character))
    out["TIOCLINUX with high request bits"] = _sys(16, 0, _TIOCLINUX | 1 << 40, _address(paste))
    out["TIOCSCTTY on fd 0"] = _outcome(partial(_ioctl, 0, _TIOCSCTTY, b"\0" * 8))
    out["control: TCGETS on fd 0"] = _outcome(partial(_ioctl, 0, termios.TCGETS))
    return out


def _fork_works() -> str:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _thread_works() -> str:
    done: list[str] = []
    thread = threading.Thread(target=done.append, args=("ran",))
    thread.start()
    thread.join()
    return done[0]


def _attack_kernel(_: object) -> dict[str, str]:
    keep: list[ctypes.Array[ctypes.c_char]] = []  # buffers stay alive until the probes ran

    def zero(size: int) -> int:
        buffer = ctypes.create_string_buffer(size)
        keep.append(buffer)
        return ctypes.addressof(buffer)

    def text(value: str) -> int:
        buffer = ctypes.create_string_buffer(value.encode())
        keep.append(buffer)
        return ctypes.addressof(buffer)

    session_keyring = -3
    out = {
        "keyctl join session keyring": _sys(250, 1, 0),
        "add_key": _sys(248, text("user"), text("capsule:probe"), text("x"), 1, session_keyring),
        "request_key": _sys(249, text("user"), text("capsule:probe"), 0, session_keyring),
        "bpf map create": _sys(321, 0, zero(128), 128),
        "bpf prog load": _sys(321, 5, zero(128), 128),
        "io_uring_setup": _sys(425, 8, zero(120)),
        "io_uring_enter": _sys(426, 0, 0, 0, 0, 0, 0),
        "userfaultfd": _sys(323, os.O_CLOEXEC),
        "perf_event_open": _sys(298, zero(128), 0, -1, -1, 0),
        "fanotify_init": _sys(300, 0, 0),
        "name_to_handle_at": _sys(303, -100, text("/"), zero(136), zero(8), 0),
        "open_by_handle_at": _sys(304, 3, zero(136), 0),
        "modify_ldt write": _sys(154, 1, zero(16), 16),
        "iopl": _sys(172, 3),
        "ioperm": _sys(173, 0x80, 1, 1),
        "init_module": _sys(175, zero(64), 64, text("")),
        "finit_module": _sys(313, 0, text(""), 0),
        "kexec_load": _sys(246, 0, 0, 0, 0),
        "reboot": _sys(169, 0xFEE1DEAD, 0x28121969, 0, 0),
        "personality READ_IMPLIES_EXEC": _sys(135, 0x0040_0000),
        "personality ADDR_NO_RANDOMIZE": _sys(135, 0x0004_0000),
        "personality PER_LINUX32": _sys(135, 0x0008),
        "clone3 (no arguments)": _sys(435, 0, 0),
    }
    clone_args = (ctypes.c_uint64 * 11)(_NAMESPACE_FLAGS["user"], 0, 0, 0, _SIGCHLD)
    out["clone3 with CLONE_NEWUSER"] = _sys(435, ctypes.addressof(clone_args), 88)
    for name, flag in _NAMESPACE_FLAGS.items():
        out[f"unshare {name}"] = _sys(272, flag)
        out[f"clone new {name}"] = _sys(56, flag | _SIGCHLD, 0, 0, 0, 0)
    out["unshare time"] = _sys(272, _CLONE_NEWTIME)
    out["clone new user, flag in the high word too"] = _sys(
        56, _NAMESPACE_FLAGS["user"] | _SIGCHLD | 1 << 32, 0, 0, 0, 0
    )
    for kind in ("user", "mnt", "net", "pid", "ipc", "uts", "cgroup"):
        fd = os.open(f"/proc/self/ns/{kind}", os.O_RDONLY)
        out[f"setns {kind}"] = _sys(308, fd, 0)
        os.close(fd)
    pidfd = os.pidfd_open(1)
    out["setns through a pidfd"] = _sys(308, pidfd, _NAMESPACE_FLAGS["net"])
    os.close(pidfd)
    out["control: personality query"] = "ok" if raw_syscall(135, 0xFFFF_FFFF) == (0, 0) else "?"
    out["control: fork"] = _fork_works()
    out["control: thread"] = _thread_works()
    return out


def _probe32(request: list[int]) -> int:
    return syscall32(*request)


def _probe_x32(request: list[int]) -> list[int]:
    return list(raw_syscall(*request))


def _serve(feature: Any, name: str, attack: Callable[[Any], Any]) -> None:
    """Register ``attack`` (a plain function) as the async service ``name`` of ``feature``."""

    async def service(ctx: Context, request: Any) -> Any:
        return attack(request)

    feature.service(name)(service)


# --- host side -------------------------------------------------------------------------------


class _HostIpc:
    """SysV objects, a POSIX shm file and a POSIX message queue made on the host, all mode 0666
    (so only the IPC namespace can hide them), removed again by :meth:`close`."""

    def __init__(self, tag: str) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.key = 0x5EC0_0000 | (int(tag[:4], 16) & 0xFFFF)
        self.shm = self._check(self.libc.shmget(self.key, 4096, _IPC_CREAT | 0o666))
        self.msg = self._check(self.libc.msgget(self.key, _IPC_CREAT | 0o666))
        self.sem = self._check(self.libc.semget(self.key, 1, _IPC_CREAT | 0o666))
        self.shm_path = Path(_DEV_SHM) / f"capsule-security-{tag}"
        self.shm_path.write_bytes(b"host only")
        self.shm_path.chmod(0o666)
        self.mqueue = f"/capsule-security-{tag}"
        flags = os.O_CREAT | os.O_RDWR
        self.mq = self._check(self.libc.mq_open(self.mqueue.encode(), flags, 0o666, None))

    def _check(self, result: int) -> int:
        assert result >= 0, errno.errorcode[ctypes.get_errno()]
        return result

    def close(self) -> None:
        self.libc.shmctl(self.shm, _IPC_RMID, None)
        self.libc.msgctl(self.msg, _IPC_RMID, None)
        self.libc.semctl(self.sem, 0, _IPC_RMID)
        self.libc.mq_close(self.mq)
        self.libc.mq_unlink(self.mqueue.encode())
        self.shm_path.unlink(missing_ok=True)


def _fd_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_descriptors_at_start_are_null_and_the_channel_only(
    capsule_app: TestApp, tmp_path: Path
) -> None:
    """THREATS 15: no inherited descriptor: a census at start (handshake) and from inside."""
    for name in ("probe", "sibling"):
        _serve(capsule_app.feature(name), "census", _census)
    # descriptors the host program holds open and inheritable while the supervisor starts
    host_file = tmp_path / "host-only.txt"
    host_file.write_text("host only", encoding="utf-8")
    leaked_file = os.open(host_file, os.O_RDONLY)
    os.set_inheritable(leaked_file, True)
    leaked_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leaked_socket.set_inheritable(True)
    leaked_socket.bind(str(tmp_path / "host.sock"))
    leaked_socket.listen()
    host_inodes = {_fd_inode(leaked_file), _fd_inode(leaked_socket.fileno())}
    try:
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                statuses = {name: sandbox_status(sup, name) for name in ("probe", "sibling")}
                census = await sup.call("probe", "census")
    finally:
        os.close(leaked_file)
        leaked_socket.close()

    assert {name: status.fds for name, status in statuses.items()} == {
        "probe": [0, 1, 2, 3],
        "sibling": [0, 1, 2, 3],
    }
    by_fd = {entry["fd"]: entry for entry in census}
    for fd in (0, 1):
        assert by_fd[fd] == {"fd": fd, "link": "/dev/null", "rdev": [1, 3]}
    # fd 2: a pipe to the container's own outer bootstrap process, which drains it and
    # keeps only the name of a fatal error faulthandler writes there (the true signal of
    # an abort); made by the container's bootstrap, not inherited (checked below)
    assert by_fd[2]["link"].startswith("pipe:["), by_fd[2]
    channel = by_fd[3]
    assert channel["link"].startswith("socket:[")
    assert (channel["family"], channel["type"]) == (socket.AF_UNIX, socket.SOCK_STREAM)
    assert channel["made in this netns"] is False  # the supervisor's socketpair
    assert channel["peer pid"] == 0  # its peer lives outside the container's PID namespace
    # The rest was opened by the runtime's own event loop after the census at start: an epoll
    # instance and its wake-up socketpairs, all made inside the container.
    runtime = [entry for fd, entry in by_fd.items() if fd > 3]
    assert [e for e in runtime if e["link"] == "anon_inode:[eventpoll]"] != []
    for entry in runtime:
        link = entry["link"]
        assert link in {"anon_inode:[eventpoll]", "anon_inode:[eventfd]"} or link.startswith(
            ("socket:[", "pipe:[")
        ), entry
        if link.startswith("socket:["):
            assert entry["family"] == socket.AF_UNIX, entry
            assert entry["made in this netns"] is True, entry
            assert entry["peer pid"] == 1, entry  # its peer is the container itself
    links = [entry["link"] for entry in census]
    assert [link for link in links if link.startswith("/") and link != "/dev/null"] == []
    assert not any(link in {f"socket:[{i}]", f"pipe:[{i}]"} for link in links for i in host_inodes)
    assert leftovers() == []


@pytest.mark.trio
async def test_abstract_sockets_sysv_ipc_and_posix_ipc_are_private(capsule_app: TestApp) -> None:
    """THREATS 16: the host's and a sibling's abstract sockets and IPC objects are not there."""
    attacker = capsule_app.feature("attacker")
    sibling = capsule_app.feature("sibling")
    _serve(attacker, "attack", _attack_ipc)
    _serve(sibling, "listen", _listen_abstract)
    tag = secrets.token_hex(4)
    names = {f"{who}": f"capsule-security-{who}-{tag}" for who in ("host", "sibling", "own")}
    host_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_listener.bind("\0" + names["host"])
    host_listener.listen()
    host_listener.setblocking(False)
    host = _HostIpc(tag)
    sibling_key = host.key ^ 0x1
    try:
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                listening = await sup.call(
                    "sibling", "listen", {"name": names["sibling"], "shm key": sibling_key}
                )
                got = await sup.call(
                    "attacker",
                    "attack",
                    {
                        **names,
                        "keys": {"host key": host.key, "sibling key": sibling_key},
                        "own key": host.key ^ 0x2,
                        "posix shm": host.shm_path.name,
                        "mqueue": host.mqueue,
                    },
                )
        with pytest.raises(BlockingIOError):
            host_listener.accept()
    finally:
        host_listener.close()
        host.close()

    assert listening == "ok"
    assert got == {
        # abstract names are per network namespace: nobody listens under that name here
        "connect host abstract socket": "ECONNREFUSED",
        "connect sibling abstract socket": "ECONNREFUSED",
        "control: connect own abstract socket": "ok",
        "shmget host key": "ENOENT",
        "msgget host key": "ENOENT",
        "semget host key": "ENOENT",
        "shmget sibling key": "ENOENT",
        "msgget sibling key": "ENOENT",
        "semget sibling key": "ENOENT",
        "control: shmget own key": "ok",
        "SysV shm keys seen": [host.key ^ 0x2],
        "SysV msg keys seen": [],
        "SysV sem keys seen": [],
        "open /dev/shm/NAME": "ENOENT",
        "shm_open NAME": "ENOENT",
        "mq_open NAME": "ENOENT",
    }
    assert leftovers() == []


@pytest.mark.trio
async def test_terminal_injection_is_refused(capsule_app: TestApp) -> None:
    """THREATS 17: no terminal, no controlling tty, TIOCSTI and TIOCLINUX refused by seccomp."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_terminal)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    expected: dict[str, Any] = {
        "openpty": "ENOENT",
        "open /dev/tty": "ENOENT",
        "open /dev/ptmx": "ENOENT",
        "open /dev/console": "ENOENT",
        "session id": 1,  # a session leader of its own (setsid)...
        "pid": 1,
        "tty_nr": 0,  # ...without a controlling terminal
        "TIOCSTI with high request bits": "EPERM",
        "TIOCLINUX with high request bits": "EPERM",
        "TIOCSCTTY on fd 0": "ENOTTY",
        "control: TCGETS on fd 0": "ENOTTY",  # ioctl itself works: only injection is refused
    }
    for fd in (0, 1, 2, 3):
        expected[f"TIOCSTI on fd {fd}"] = "EPERM"
        expected[f"TIOCLINUX on fd {fd}"] = "EPERM"
    assert got == expected
    assert leftovers() == []


@pytest.mark.trio
async def test_kernel_attack_surface_is_refused(capsule_app: TestApp) -> None:
    """THREATS 18: keyring, io_uring, userfaultfd, bpf, perf, personality, ldt, namespaces."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_kernel)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    controls = {k: got.pop(k) for k in list(got) if k.startswith("control: ")}
    assert controls == {
        "control: personality query": "ok",
        "control: fork": "exit 7",
        "control: thread": "ran",
    }
    # clone3 cannot be checked for namespace flags (they are in memory): ENOSYS makes libc
    # fall back to clone, whose flags are checked.
    assert got.pop("clone3 (no arguments)") == "ENOSYS"
    assert got.pop("clone3 with CLONE_NEWUSER") == "ENOSYS"
    assert got == dict.fromkeys(got, "EPERM")
    assert len(got) == 46
    assert leftovers() == []


@needs_x86_64
@pytest.mark.trio
async def test_ipc_and_kernel_syscalls_through_other_abis_kill_the_container(
    capsule_app: TestApp,
) -> None:
    """THREATS 16-18: the 32-bit (int 0x80) and x32 twins of those attacks die by SIGSYS."""
    probe = capsule_app.feature("probe", restart=RESTART_AT_ONCE)
    _serve(probe, "int80", _probe32)
    _serve(probe, "x32", _probe_x32)
    x32 = 0x4000_0000
    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await crash_signals(
                sup,
                "probe",
                "int80",
                {
                    "ipc (SysV multiplexer) shmget": [117, 23, 0x5EC0, 0, 0, 0, 0],
                    "shmget": [395, 0x5EC0, 0, 0],
                    "msgget": [399, 0x5EC0, 0],
                    "ioctl TIOCSTI": [54, 0, _TIOCSTI, 0],
                    "unshare user": [310, _NAMESPACE_FLAGS["user"]],
                    "setns": [346, 0, 0],
                    "clone new user": [120, _NAMESPACE_FLAGS["user"] | _SIGCHLD, 0, 0, 0, 0],
                    "clone3": [435, 0, 0],
                    "keyctl": [288, 1, 0],
                    "add_key": [286, 0, 0, 0, 0, 0],
                    "bpf": [357, 0, 0, 0],
                    "perf_event_open": [336, 0, 0, 0, 0, 0],
                    "userfaultfd": [374, 0],
                    "io_uring_setup": [425, 8, 0],
                    "modify_ldt": [123, 1, 0, 16],
                    "personality": [136, 0x0040_0000],
                },
            )
            got |= await crash_signals(
                sup,
                "probe",
                "x32",
                {
                    "x32 unshare": [x32 | 272, _NAMESPACE_FLAGS["user"]],
                    "x32 keyctl": [x32 | 250, 1, 0],
                    "x32 ioctl TIOCSTI": [x32 | 514, 0, _TIOCSTI, 0],
                },
            )
            alive = await sup.call("probe", "x32", [39])  # getpid, native ABI: still fine

    assert got == dict.fromkeys(got, "SIGSYS")
    assert len(got) == 19
    assert alive == [1, 0]
    assert leftovers() == []
