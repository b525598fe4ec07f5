"""THREATS.md "Network" item 19 (open a socket directly), attacked from inside real containers.

A container has an empty network namespace (an unconfigured, down loopback) and a seccomp filter
that lets it create AF_UNIX sockets only; Landlock denies TCP bind and connect besides.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
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

_SIOCGIFFLAGS: Final = 0x8913
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8
_FAMILIES: Final = {
    "AF_INET": 2,
    "AF_INET6": 10,
    "AF_NETLINK": 16,
    "AF_PACKET": 17,
    "AF_AX25": 3,
    "AF_APPLETALK": 5,
    "AF_X25": 9,
    "AF_KEY": 15,
    "AF_RDS": 21,
    "AF_TIPC": 30,
    "AF_BLUETOOTH": 31,
    "AF_CAN": 29,
    "AF_ALG": 38,
    "AF_VSOCK": 40,
    "AF_XDP": 44,
}
_TYPES: Final = {"SOCK_STREAM": 1, "SOCK_DGRAM": 2, "SOCK_RAW": 3}

# --- run inside the container (shipped by value with the handlers) ----------------------------


def _outcome(action: Callable[[], object]) -> str:
    """``ok`` if ``action`` succeeds, else the errno name of the OSError it raised."""
    try:
        result = action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    if isinstance(result, socket.socket):
        result.close()
    return "ok"


def _sys(nr: int, *args: int) -> str:
    """A raw syscall's outcome: ``ok`` (the descriptor it made is closed) or the errno name."""
    result, err = raw_syscall(nr, *args)
    if err:
        return errno.errorcode.get(err, f"errno {err}")
    os.close(result)
    return "ok"


def _socketpair(family: int) -> None:
    first, second = socket.socketpair(family)
    first.close()
    second.close()


def _attack_sockets(_: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for family_name, family in _FAMILIES.items():
        for type_name, kind in _TYPES.items():
            out[f"socket {family_name} {type_name}"] = _sys(41, family, kind, 0)
    out["socket AF_INET, family in the high word too"] = _sys(41, 2 | 1 << 32, 1, 0)
    out["socketpair AF_INET"] = _outcome(partial(_socketpair, socket.AF_INET))
    out["socketpair AF_NETLINK"] = _sys(53, 16, 2, 0, 0)
    out["if_nameindex (netlink)"] = _outcome(socket.if_nameindex)
    out["getaddrinfo localhost:80 then connect"] = _outcome(
        partial(socket.create_connection, ("127.0.0.1", 80), 1)
    )
    for type_name in ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_SEQPACKET"):
        kind = getattr(socket, type_name)
        out[f"control: socket AF_UNIX {type_name}"] = _outcome(
            partial(socket.socket, socket.AF_UNIX, kind)
        )
    out["control: socketpair AF_UNIX"] = _outcome(partial(_socketpair, socket.AF_UNIX))
    return out


def _proc_net(name: str) -> list[str]:
    with open(f"/proc/net/{name}", encoding="ascii") as file:
        return file.read().splitlines()


def _attack_namespace(request: dict[str, Any]) -> dict[str, Any]:
    host_listener = ("127.0.0.1", request["port"])
    connect = _outcome(partial(socket.create_connection, host_listener, 1))
    interfaces = [line.split(":")[0].strip() for line in _proc_net("dev")[2:]]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        own_sockets = {os.fstat(fd).st_ino for fd in _open_socket_fds()}
    unix = [int(line.split()[6]) for line in _proc_net("unix")[1:] if len(line.split()) >= 7]
    return {
        "connect to the host's listener on 127.0.0.1": connect,
        "interfaces": interfaces,
        "lo flags": flags,
        "routes": _proc_net("route")[1:],
        "ipv6 addresses": _proc_net("if_inet6"),
        "tcp": _proc_net("tcp")[1:],
        "tcp6": _proc_net("tcp6")[1:],
        "udp": _proc_net("udp")[1:],
        "unix sockets not its own": sorted(set(unix) - own_sockets),
    }


def _open_socket_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:["):
                fds.append(int(name))
        except FileNotFoundError:
            continue
    return fds


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


def _host_tcp_lines() -> list[str]:
    return Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_only_unix_sockets_can_be_created(capsule_app: TestApp) -> None:
    """THREATS 19: socket() and socketpair() of every family but AF_UNIX: EAFNOSUPPORT."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_sockets)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    controls = {k: got.pop(k) for k in list(got) if k.startswith("control: ")}
    assert controls == dict.fromkeys(controls, "ok")
    assert len(controls) == 4
    assert got == dict.fromkeys(got, "EAFNOSUPPORT")
    assert len(got) == len(_FAMILIES) * len(_TYPES) + 5
    assert leftovers() == []


@pytest.mark.trio
async def test_the_network_namespace_is_empty_and_down(capsule_app: TestApp) -> None:
    """THREATS 19: only a down loopback, no routes or addresses, the host's sockets invisible."""
    probe = capsule_app.feature("probe")
    _serve(probe, "look", _attack_namespace)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                status = sandbox_status(sup, "probe")
                got = await sup.call("probe", "look", {"port": port})
                host_tcp = _host_tcp_lines()
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached the host's listener
    finally:
        listener.close()

    assert any(f":{port:04X} " in line for line in host_tcp), "the host sees its listener"
    assert got["connect to the host's listener on 127.0.0.1"] == "EAFNOSUPPORT"
    assert got["interfaces"] == ["lo"]
    assert got["lo flags"] & _IFF_LOOPBACK
    assert not got["lo flags"] & _IFF_UP
    assert got["routes"] == []
    assert got["ipv6 addresses"] == []
    assert got["tcp"] == []
    assert got["tcp6"] == []
    assert got["udp"] == []
    assert got["unix sockets not its own"] == []
    assert status.namespaces["net"] != os.readlink("/proc/self/ns/net")
    assert leftovers() == []


@needs_x86_64
@pytest.mark.trio
async def test_socket_syscalls_through_other_abis_kill_the_container(
    capsule_app: TestApp,
) -> None:
    """THREATS 19: socketcall and the i386 and x32 socket calls die by SIGSYS."""
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
                    "socketcall SYS_SOCKET": [102, 1, 0],
                    "socketcall SYS_CONNECT": [102, 3, 0],
                    "socket AF_INET": [359, 2, 1, 0],
                    "socket AF_NETLINK": [359, 16, 2, 0],
                    "socketpair AF_INET": [360, 2, 1, 0, 0],
                    "connect": [362, 3, 0, 0],
                },
            )
            got |= await crash_signals(
                sup,
                "probe",
                "x32",
                {
                    "x32 socket AF_INET": [x32 | 41, 2, 1, 0],
                    "x32 socket AF_UNIX": [x32 | 41, 1, 1, 0],
                },
            )
            alive = await sup.call("probe", "x32", [39])  # getpid, native ABI: still fine

    assert got == dict.fromkeys(got, "SIGSYS")
    assert len(got) == 8
    assert alive == [1, 0]
    assert leftovers() == []
