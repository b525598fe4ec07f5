"""Network egress through the broker (THREATS.md item 20): ``ctx.connect`` and ``ctx.listen``
in real containers, against real loopback servers the test starts on an ephemeral port.

The broker checks the ``net`` grant against the destination as asked and, for a granted name,
against the addresses it resolves to; it connects from the supervisor's network namespace and
passes the socket into the container. A few tests replace the mediator's resolver (its test
seam, ``sup._broker.network.resolver``) to make a name resolve where the test wants.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
import trio
from anyio.abc import SocketAttribute

from capsule import CapabilityDeniedError, ProtocolError
from capsule._broker._connection import Connection, Outbox
from capsule._broker._netpolicy import pin, screen
from capsule._broker._network import LANDLOCK_NET_ABI, RESOLVERS
from capsule._container._feature import Context, Feature
from capsule._ipc._channel import Channel, encode_frame
from capsule._ipc._messages import Error, FromSupervisor, Opened, Result
from capsule._ipc._payload import NIL
from capsule._sandbox import _isolation
from capsule.testing import TestApp

_ISOLATION = _isolation.probe()

needs_landlock_net = pytest.mark.skipif(
    not _ISOLATION.get("landlock").available or _ISOLATION.landlock_abi < LANDLOCK_NET_ABI,
    reason=(
        f"the broker passes sockets only to containers under Landlock ABI {LANDLOCK_NET_ABI}+ "
        f"(here: ABI {_ISOLATION.landlock_abi})"
    ),
)


# --- run inside the containers (shipped by value with the handlers) ---------------------------


async def _exchange(ctx: Context, request: Mapping[str, Any]) -> dict[str, Any]:
    """Connect, send ``send``, half-close and read to the end: what happened, as data."""
    try:
        stream = await ctx.connect(request["host"], request["port"], timeout=request.get("timeout"))
    except CapabilityDeniedError as exc:
        return {"outcome": "denied", "capability": exc.capability, "reason": exc.reason}
    except OSError as exc:
        return {"outcome": type(exc).__name__, "errno": exc.errno}
    async with stream:
        peer = _extra(stream, SocketAttribute.remote_address)
        await stream.send_all(str(request.get("send", "ping")).encode())
        await stream.send_eof()
        got = b""
        with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream):
            while True:
                got += await stream.receive()
    return {"outcome": "ok", "peer": [peer[0], peer[1]], "got": got.decode()}


async def _exchange_all(ctx: Context, requests: Sequence[Mapping[str, Any]]) -> list[Any]:
    return [await _exchange(ctx, request) for request in requests]


def _extra(provider: Any, attribute: Any) -> Any:
    """An anyio typed attribute of a stream or listener (``SocketAttribute.remote_port``...)."""
    return provider.extra(attribute)  # noqa: S610 - anyio's extra attributes, not Django's


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _client(app: TestApp, name: str, **policy: Any) -> Feature:
    """A feature granted ``policy`` whose ``try`` and ``try-all`` services run _exchange."""
    feature = app.feature(name, policy=policy)

    @feature.service("try")
    async def attempt(ctx: Context, request: Mapping[str, Any]) -> dict[str, Any]:
        return await _exchange(ctx, request)

    @feature.service("try-all")
    async def attempt_all(ctx: Context, requests: Sequence[Mapping[str, Any]]) -> list[Any]:
        return await _exchange_all(ctx, requests)

    return feature


# --- host side -----------------------------------------------------------------------------------


@dataclass
class Server:
    """A loopback server: each connection gets back what it sent, upper-cased, after EOF."""

    port: int
    received: list[bytes] = field(default_factory=list)
    accepted: int = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                data = b""
                async for chunk in stream:
                    data += chunk
                self.received.append(data)
                await stream.send_all(data.upper())


@contextlib.asynccontextmanager
async def serving(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Server]:
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = Server(port=listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.handle, listeners)
        yield server
        nursery.cancel_scope.cancel()


def fixed_resolver(
    answers: Mapping[str, Sequence[str]], calls: list[str] | None = None
) -> Callable[[str, int], list[str]]:
    """A resolver (run in a worker thread by the mediator) that answers from ``answers``."""

    def resolve(name: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(name)
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(answers[name])

    return resolve


def audit_lines(app: TestApp) -> list[dict[str, Any]]:
    path = app.root / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def net_events(app: TestApp, feature: str) -> list[dict[str, Any]]:
    return [
        e
        for e in audit_lines(app)
        if e["event"] in ("connect", "listen") and e["feature"] == feature
    ]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- the rules and the descriptor passing, without containers ----------------------------------


@pytest.mark.parametrize(
    ("address", "name", "why"),
    [
        ("127.0.0.1", "localhost", None),
        ("::1", "api.localhost", None),
        ("93.184.216.34", "example.org", None),
        ("10.1.2.3", "db.internal", None),  # private networks stay usable by name
        ("::ffff:93.184.216.34", "example.org", None),  # used as the IPv4 address it maps
        ("127.0.0.1", "example.org", "only localhost may resolve to one"),
        ("::ffff:127.0.0.1", "example.org", "only localhost may resolve to one"),
        ("10.1.2.3", "localhost", "localhost must resolve to one"),
        ("169.254.169.254", "example.org", "cloud metadata"),
        ("fd00:ec2::254", "example.org", "cloud metadata"),
        ("168.63.129.16", "example.org", "cloud metadata"),
        ("169.254.1.1", "example.org", "link-local"),
        ("fe80::1", "example.org", "link-local"),
        ("fe80::1%2", "example.org", "scoped"),
        ("0.0.0.0", "example.org", "unspecified"),  # noqa: S104 - an address screened, not bound
        ("::", "example.org", "unspecified"),
        ("224.0.0.1", "example.org", "multicast"),
        ("255.255.255.255", "example.org", "broadcast"),
        ("240.0.0.1", "example.org", "reserved"),
        ("64:ff9b::a9fe:a9fe", "example.org", "embeds 169.254.169.254"),  # NAT64
        ("2002:7f00:1::1", "example.org", "embeds 127.0.0.1"),  # 6to4
        ("64:ff9b::5db8:d822", "example.org", None),
    ],
)
def test_the_addresses_a_name_may_resolve_to(address: str, name: str, why: str | None) -> None:
    found = screen(pin(ip_address(address)), name)
    if why is None:
        assert found is None
    else:
        assert found is not None
        assert why in found


def _pair() -> tuple[Connection, Channel[FromSupervisor]]:
    """The broker's and the container's ends of one channel, in this process."""
    ours, theirs = socket.socketpair()
    return Connection(ours, "f", Outbox()), Channel(theirs, FromSupervisor, passed_fds=True)


def _passable() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _fallback(request_id: int) -> bytes:
    return encode_frame(Error(id=request_id, kind="network", feature="f", message="lost"))


@pytest.mark.trio
async def test_only_the_frame_announcing_a_socket_claims_it_and_in_order() -> None:
    before = host_fds()
    conn, channel = _pair()
    passed = _passable()
    name = passed.getsockname()
    with trio.fail_after(5):
        conn.send(Result(id=1, value=NIL))
        conn.pass_socket(encode_frame(Opened(id=2, address="a", port=1)), passed, _fallback(2))
        conn.send(Result(id=3, value=NIL))
        conn.push()
        assert passed.fileno() == -1  # in flight: the broker's copy is closed
        assert isinstance(await channel.receive(), Result)
        opened = await channel.receive()
        assert isinstance(opened, Opened)
        with channel.take_passed() as got:
            assert got.getsockname() == name
        third = await channel.receive()
        assert isinstance(third, Result)
        assert third.id == 3
    conn.close()
    channel._sock.close()
    assert host_fds() == before


@pytest.mark.trio
async def test_descriptors_no_frame_announces_are_closed_and_a_missing_one_is_an_error() -> None:
    conn, channel = _pair()
    before = host_fds()
    with trio.fail_after(5):
        stray = _passable()  # attached to a Result: nothing claims it
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array_of(stray.fileno()))]
        conn.sock.sendmsg([encode_frame(Result(id=1, value=NIL))], rights)
        stray.close()
        conn.send(Opened(id=2, address="a", port=1))  # announces one, carries none
        conn.push()
        assert isinstance(await channel.receive(), Result)
        assert isinstance(await channel.receive(), Opened)
        with pytest.raises(ProtocolError, match="no descriptor came with it"):
            channel.take_passed()
        assert host_fds() == before  # the stray one is closed already
    conn.close()
    channel._sock.close()


def array_of(*fds: int) -> bytes:
    return array.array("i", fds).tobytes()


@pytest.mark.trio
async def test_a_socket_queued_behind_a_full_channel_goes_with_its_frame() -> None:
    conn, channel = _pair()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    passed = _passable()
    name = passed.getsockname()
    filler = Result(id=1, value=msgspec_raw(b"x" * 60_000))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.write_loop)
            for _ in range(8):
                conn.send(filler)
            conn.pass_socket(encode_frame(Opened(id=2, address="a", port=1)), passed, _fallback(2))
            conn.send(Result(id=3, value=NIL))
            conn.push()
            assert passed.fileno() != -1  # still queued: the channel is full
            seen = []
            while len(seen) < 10:
                message = await channel.receive()
                seen.append(type(message).__name__)
                if isinstance(message, Opened):
                    with channel.take_passed() as got:
                        assert got.getsockname() == name
            nursery.cancel_scope.cancel()
    assert seen == ["Result"] * 8 + ["Opened", "Result"]
    conn.close()
    channel._sock.close()


@pytest.mark.trio
async def test_a_closing_channel_closes_the_sockets_still_queued() -> None:
    conn, channel = _pair()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    passed = _passable()
    conn.send(Result(id=1, value=msgspec_raw(b"x" * 200_000)))
    conn.push()
    conn.pass_socket(encode_frame(Opened(id=2, address="a", port=1)), passed, _fallback(2))
    conn.push()
    assert passed.fileno() != -1
    conn.close()
    assert passed.fileno() == -1
    assert not conn.pass_socket(b"", second := _passable(), b"")  # closed: refused and closed
    assert second.fileno() == -1
    channel._sock.close()


def msgspec_raw(data: bytes) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode(data))


# --- the tests with containers -------------------------------------------------------------------


@needs_landlock_net
@pytest.mark.trio
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_granted_connection_carries_bytes_both_ways(
    capsule_app: TestApp, host: str
) -> None:
    async with serving(host) as server:
        grant = f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
        _client(capsule_app, "client", net=[grant])
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                got = await sup.call(
                    "client", "try", {"host": host, "port": server.port, "send": "hello"}
                )
                stats = sup.feature("client").statistics()
                allowed = sup.statistics().allowed

    assert got == {"outcome": "ok", "peer": [host, server.port], "got": "HELLO"}
    assert server.received == [b"hello"]
    assert stats.connections == 1
    assert stats.denied == 0
    assert allowed >= 1
    [event] = net_events(capsule_app, "client")
    assert event["decision"] == "allow"
    assert event["capability"] == f"net:connect:{grant}"
    assert (event["host"], event["port"], event["address"]) == (host, server.port, host)
    assert event["outcome"] == "opened"
    assert event["token"]


@needs_landlock_net
@pytest.mark.trio
async def test_destinations_outside_the_grant_are_refused_audited_and_never_reached(
    capsule_app: TestApp,
) -> None:
    async with serving() as server:
        port = server.port
        _client(capsule_app, "client", net=[f"127.0.0.1:{port}"])
        asked = [
            ("127.0.0.1", port + 1 if port < 65535 else port - 1, "no capability"),  # another port
            ("127.0.0.2", port, "no capability"),  # another host
            ("localhost", port, "no capability"),  # a name is not the address it names
            ("2130706433", port, "not a dotted-quad"),  # decimal
            ("0177.0.0.1", port, "not a dotted-quad"),  # octal
            ("0x7f.0.0.1", port, "looks like a numeric address"),  # hex
            ("127.1", port, "not a dotted-quad"),  # short form
            ("::ffff:127.0.0.1", port, "as 127.0.0.1"),  # IPv4-mapped IPv6
            ("169.254.169.254", 80, "no capability"),  # link-local metadata, not granted
            ("fe80::1", port, "no capability"),  # IPv6 link-local
            ("127.0.0.1", 0, "from 1 to 65535"),
        ]
        requests = [{"host": h, "port": p} for h, p, _ in asked]
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                got = await sup.call("client", "try-all", requests)
                token = sup.feature("client").tokens()[0].token_id
                denied = sup.feature("client").statistics().denied

    assert server.accepted == 0
    assert [g["outcome"] for g in got] == ["denied"] * len(asked)
    for (host, _, fragment), answer in zip(asked, got, strict=True):
        assert fragment in answer["reason"], (host, answer)
        assert answer["capability"].startswith("net:connect:")
    assert denied == len(asked)
    events = net_events(capsule_app, "client")
    assert [(e["host"], e["port"]) for e in events] == [(h, p) for h, p, _ in asked]
    for event, (_, _, fragment) in zip(events, asked, strict=True):
        assert event["decision"] == "deny"
        assert fragment in event["reason"]
        assert event["token"] == token  # the feature's only token, named in every denial


@needs_landlock_net
@pytest.mark.trio
async def test_a_granted_name_is_checked_against_the_addresses_it_resolves_to(
    capsule_app: TestApp,
) -> None:
    async with serving() as server:
        port = server.port
        names = ["localhost", "svc.test", "metadata.test", "db.localhost", "both.test", "gone.test"]
        _client(
            capsule_app,
            "client",
            net=[f"{name}:{port}" for name in names] + [f"127.0.0.1:{port}"],
        )
        resolver = fixed_resolver(
            {
                "localhost": ["127.0.0.1"],
                "svc.test": ["127.0.0.2"],  # a public-looking name pointing here: rebinding
                "metadata.test": ["169.254.169.254", "fd00:ec2::254"],
                "db.localhost": ["10.1.2.3"],  # localhost names must stay on loopback
                "both.test": ["169.254.169.254", "127.0.0.1"],  # 127.0.0.1 granted literally
            }
        )
        requests = [{"host": name, "port": port, "send": name} for name in names]
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                sup._broker.network.resolver = resolver
                got = await sup.call("client", "try-all", requests)

    outcomes = dict(zip(names, got, strict=True))
    assert outcomes["localhost"]["got"] == "LOCALHOST"
    assert outcomes["both.test"] == {
        "outcome": "ok",
        "peer": ["127.0.0.1", port],
        "got": "BOTH.TEST",
    }
    assert outcomes["svc.test"]["outcome"] == "denied"
    assert "only localhost may resolve to one" in outcomes["svc.test"]["reason"]
    assert outcomes["metadata.test"]["outcome"] == "denied"
    assert "169.254.169.254 is a cloud metadata address" in outcomes["metadata.test"]["reason"]
    assert "fd00:ec2::254 is a cloud metadata address" in outcomes["metadata.test"]["reason"]
    assert "localhost must resolve to one" in outcomes["db.localhost"]["reason"]
    assert outcomes["gone.test"] == {"outcome": "gaierror", "errno": socket.EAI_NONAME}
    assert sorted(server.received) == [b"both.test", b"localhost"]
    decisions = {
        e["host"]: (e["decision"], e.get("outcome")) for e in net_events(capsule_app, "client")
    }
    assert decisions == {
        "localhost": ("allow", "opened"),
        "both.test": ("allow", "opened"),
        "svc.test": ("deny", None),
        "metadata.test": ("deny", None),
        "db.localhost": ("deny", None),
        "gone.test": ("allow", "failed: [Errno -2] Name or service not known"),
    }


@needs_landlock_net
@pytest.mark.trio
async def test_a_name_is_resolved_once_and_the_connection_goes_where_it_was_checked(
    capsule_app: TestApp,
) -> None:
    """DNS rebinding between check and connect: the second answer is never used."""
    async with serving("127.0.0.1") as checked, serving("127.0.0.2", checked.port) as rebound:
        port = checked.port
        _client(capsule_app, "client", net=[f"localhost:{port}"])
        calls: list[str] = []

        def rebinding(name: str, _port: int) -> list[str]:
            calls.append(name)
            return ["127.0.0.1"] if len(calls) % 2 else ["127.0.0.2"]  # changes every time

        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                sup._broker.network.resolver = rebinding
                first = await sup.call("client", "try", {"host": "localhost", "port": port})
                second = await sup.call("client", "try", {"host": "localhost", "port": port})

    assert calls == ["localhost", "localhost"]  # once per connect
    assert first["peer"] == ["127.0.0.1", port]
    assert second["peer"] == ["127.0.0.2", port]  # its own, single resolution: still loopback
    assert checked.received == [b"ping"]
    assert rebound.received == [b"ping"]
    addresses = [e["address"] for e in net_events(capsule_app, "client")]
    assert addresses == ["127.0.0.1", "127.0.0.2"]  # each connection went where it was checked


class Stuck:
    """A resolver for the mediator: ``stuck.test`` hangs, as behind a dead DNS server, until
    ``release``; every other name resolves to 127.0.0.1."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, name: str, port: int) -> list[str]:
        if name == "stuck.test":
            self.entered.set()
            self.release.wait(30)
        return ["127.0.0.1"]


@needs_landlock_net
@pytest.mark.trio
async def test_a_slow_or_refused_connect_does_not_disturb_another_feature(
    capsule_app: TestApp,
) -> None:
    async with serving() as server:
        port = server.port
        slow_feature = _client(capsule_app, "slow", net=[f"stuck.test:{port}"])

        @slow_feature.service("try-at-once")
        async def at_once(ctx: Context, request: Mapping[str, Any]) -> list[Any]:
            outcomes: list[Any] = []

            async def one() -> None:
                outcomes.append(await _exchange(ctx, request))

            async with anyio.create_task_group() as tg:
                for _ in range(RESOLVERS + 2):  # more than its resolver threads
                    tg.start_soon(one)
            return outcomes

        _client(capsule_app, "fast", net=[f"127.0.0.1:{port}", f"localhost:{port}"])
        _client(capsule_app, "bad", net=[f"127.0.0.1:{port}"])
        resolver = Stuck()
        slow_got: list[Any] = []
        try:
            with trio.fail_after(30):
                async with capsule_app.open() as sup:
                    sup._broker.network.resolver = resolver

                    async def slow() -> None:
                        request = {"host": "stuck.test", "port": port, "timeout": 1}
                        slow_got.extend(await sup.call("slow", "try-at-once", request))

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(slow)
                        await trio.to_thread.run_sync(resolver.entered.wait, 10)
                        refused = await sup.call(
                            "bad", "try", {"host": "127.0.0.1", "port": port + 1}
                        )
                        fast = [
                            await sup.call("fast", "try", {"host": host, "port": port})
                            for host in ["127.0.0.1", "localhost"] * 3  # its names resolve
                        ]
                        assert not slow_got  # all that while, still resolving
        finally:
            resolver.release.set()

    assert refused["outcome"] == "denied"
    assert fast == [{"outcome": "ok", "peer": ["127.0.0.1", port], "got": "PING"}] * 6
    assert slow_got == [{"outcome": "TimeoutError", "errno": errno.ETIMEDOUT}] * (RESOLVERS + 2)
    slow_events = net_events(capsule_app, "slow")
    assert {(e["decision"], e["outcome"]) for e in slow_events} == {("allow", "timed out")}


@needs_landlock_net
@pytest.mark.trio
async def test_no_descriptor_leaks_in_the_supervisor_or_the_container(
    capsule_app: TestApp,
) -> None:
    async with serving() as server:
        port = server.port
        closed = free_port()
        net = [f"127.0.0.1:{port}", f"127.0.0.1:{closed}", f"stuck.test:{port}"]
        feature = _client(capsule_app, "client", net=net)

        @feature.service("burst")
        async def burst(ctx: Context, requests: Sequence[Mapping[str, Any]]) -> list[Any]:
            before = _fd_count()
            outcomes = [(await _exchange(ctx, request))["outcome"] for request in requests]
            with anyio.move_on_after(0.2) as given_up:  # cancelled while it resolves
                await ctx.connect("stuck.test", port)
            return [before, _fd_count(), outcomes, given_up.cancelled_caught]

        ok = {"host": "127.0.0.1", "port": port}
        requests = (
            [ok] * 20
            + [{"host": "127.0.0.1", "port": closed}] * 5  # refused by nobody listening
            + [{"host": "127.0.0.2", "port": port}] * 5  # denied
            + [{"host": "2130706433", "port": port}] * 5  # denied, not canonical
        )
        resolver = Stuck()
        try:
            with trio.fail_after(60):
                async with capsule_app.open() as sup:
                    sup._broker.network.resolver = resolver
                    await sup.call("client", "try", ok)  # warm up: threads, buffers, limiter
                    before = host_fds()
                    fds_before, fds_after, outcomes, gave_up = await sup.call(
                        "client", "burst", requests
                    )
                    resolver.release.set()
                    await sup.call("client", "try", ok)
                    after = host_fds()
                    stats = sup.feature("client").statistics()
        finally:
            resolver.release.set()

    assert outcomes == ["ok"] * 20 + ["ConnectionRefusedError"] * 5 + ["denied"] * 10
    assert gave_up
    assert fds_before == fds_after
    assert before == after
    assert stats.connections == 22
    assert server.received.count(b"ping") == 22


@needs_landlock_net
@pytest.mark.trio
async def test_a_socket_lost_in_transfer_is_an_error_and_leaks_nothing(
    capsule_app: TestApp,
) -> None:
    """A container at its open-files limit: the kernel drops the passed descriptor
    (MSG_CTRUNC); the connect fails with EMFILE and the next one works."""
    async with serving() as server:
        port = server.port
        feature = _client(capsule_app, "client", net=[f"127.0.0.1:{port}"])

        @feature.service("full")
        async def full(ctx: Context, request: Any) -> list[Any]:
            hoard: list[int] = []
            before = _fd_count()
            try:
                while True:
                    hoard.append(os.dup(0))
            except OSError:
                pass
            try:
                first = await _exchange(ctx, {"host": "127.0.0.1", "port": port})
            finally:
                for fd in hoard:
                    os.close(fd)
            second = await _exchange(ctx, {"host": "127.0.0.1", "port": port, "send": "again"})
            return [first, second, before == _fd_count()]

        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                first, second, balanced = await sup.call("client", "full")

    assert first == {"outcome": "OSError", "errno": errno.EMFILE}
    assert second["got"] == "AGAIN"
    assert balanced
    assert b"again" in server.received


@needs_landlock_net
@pytest.mark.trio
async def test_a_conns_limit_caps_the_connections_held_open_at_once(
    capsule_app: TestApp,
) -> None:
    async with serving() as server:
        port = server.port
        feature = capsule_app.feature("client", policy={"net": [f"127.0.0.1:{port}?conns=2"]})

        @feature.service("hold")
        async def hold(ctx: Context, request: Any) -> list[str]:
            seen = []
            first = await ctx.connect("127.0.0.1", port)
            second = await ctx.connect("127.0.0.1", port)
            try:
                await ctx.connect("127.0.0.1", port)
            except CapabilityDeniedError as exc:
                seen.append(exc.reason)
            await first.aclose()  # one closed: room for one more
            async with await ctx.connect("127.0.0.1", port) as third:
                seen.append(repr(_extra(third, SocketAttribute.remote_port)))
            await second.aclose()
            return seen

        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                seen = await sup.call("client", "hold")

    assert seen == ["2 sockets are open already, as many as its capability allows", str(port)]
    assert server.accepted == 3


@needs_landlock_net
@pytest.mark.trio
async def test_a_granted_listener_is_passed_in_and_accepts_connections(
    capsule_app: TestApp,
) -> None:
    port = free_port()
    feature = capsule_app.feature("server", policy={"listen": [f"127.0.0.1:{port}"]})
    listeners: list[Any] = []

    @feature.service("open")
    async def open_listener(ctx: Context, request: Mapping[str, Any]) -> Any:
        try:
            listener = await ctx.listen(request["host"], request["port"])
        except CapabilityDeniedError as exc:
            return f"denied: {exc.capability}"
        listeners.append(listener)
        return _extra(listener, SocketAttribute.local_port)

    @feature.service("serve-one")
    async def serve_one(ctx: Context, request: Any) -> str:
        async with listeners.pop() as listener, await listener.accept() as stream:
            data = await stream.receive()
            await stream.send_all(data.upper())
            return data.decode()

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            other = await sup.call("server", "open", {"host": "127.0.0.1", "port": port + 1})
            opened = await sup.call("server", "open", {"host": "127.0.0.1", "port": port})
            client = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel completes it
            async with client:
                await client.send_all(b"knock")
                heard = await sup.call("server", "serve-one")
                reply = await client.receive_some(100)
            with pytest.raises(OSError, match="failed"):  # closed with the block: refused
                await trio.open_tcp_stream("127.0.0.1", port)

    assert other == f"denied: net:listen:127.0.0.1:{port + 1}"
    assert opened == port
    assert heard == "knock"
    assert reply == b"KNOCK"
    events = net_events(capsule_app, "server")
    assert [(e["event"], e["decision"]) for e in events] == [
        ("listen", "deny"),
        ("listen", "allow"),
    ]


@needs_landlock_net
@pytest.mark.trio
async def test_a_passed_socket_can_be_used_but_not_redirected(capsule_app: TestApp) -> None:
    """THREATS 19 and 20 together: the container uses what it was passed (send, recv,
    shutdown, socket options, peer name) but cannot make a socket of its own, nor point the
    passed one elsewhere (Landlock denies TCP connect and bind)."""
    async with serving() as server, serving() as elsewhere:
        port = server.port
        feature = capsule_app.feature("client", policy={"net": [f"127.0.0.1:{port}"]})

        @feature.service("use")
        async def use(ctx: Context, request: Any) -> dict[str, Any]:
            import ctypes  # noqa: PLC0415 - runs in the container

            out: dict[str, Any] = {}

            def attempt(name: str, action: Callable[[], object]) -> None:
                try:
                    action()
                except OSError as exc:
                    out[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                else:
                    out[name] = "ok"

            attempt("socket AF_INET", lambda: socket.socket(socket.AF_INET).close())
            stream = await ctx.connect("127.0.0.1", port)
            raw = _extra(stream, SocketAttribute.raw_socket)
            attempt("getpeername", raw.getpeername)
            attempt("getsockopt", lambda: raw.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))
            attempt("setsockopt", lambda: raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
            await stream.send_all(b"used")
            attempt("shutdown", lambda: raw.shutdown(socket.SHUT_WR))
            out["received"] = (await stream.receive()).decode()
            await stream.aclose()

            held = await ctx.connect("127.0.0.1", port)
            victim = _extra(held, SocketAttribute.raw_socket)
            unspec = (socket.AF_UNSPEC).to_bytes(2, "little") + bytes(14)
            libc = ctypes.CDLL(None, use_errno=True)

            def disconnect() -> None:
                if libc.connect(victim.fileno(), unspec, len(unspec)) != 0:
                    raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")

            attempt("disconnect", disconnect)
            attempt("reconnect elsewhere", lambda: victim.connect(("127.0.0.1", request)))
            attempt("bind", lambda: victim.bind(("127.0.0.1", 0)))
            attempt(
                "fast open elsewhere",
                lambda: victim.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", request)),
            )
            await held.aclose()
            return out

        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                got = await sup.call("client", "use", elsewhere.port)

    assert got == {
        "socket AF_INET": "EAFNOSUPPORT",
        "getpeername": "ok",
        "getsockopt": "ok",
        "setsockopt": "ok",
        "shutdown": "ok",
        "received": "USED",
        "disconnect": "ok",
        "reconnect elsewhere": "EACCES",
        "bind": "EACCES",
        "fast open elsewhere": "EACCES",
    }
    assert elsewhere.accepted == 0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@needs_landlock_net
@pytest.mark.anyio
async def test_the_mediator_works_with_the_supervisor_on_either_event_loop(
    capsule_app: TestApp, anyio_backend: str
) -> None:
    received: list[bytes] = []

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = await stream.receive()
            received.append(data)
            await stream.send(data.upper())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = _extra(listener, SocketAttribute.local_port)
    _client(capsule_app, "client", net=[f"127.0.0.1:{port}", f"localhost:{port}"])
    with anyio.fail_after(30):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            async with capsule_app.open() as sup:
                sup._broker.network.resolver = fixed_resolver({"localhost": ["127.0.0.1"]})
                by_address = await sup.call("client", "try", {"host": "127.0.0.1", "port": port})
                by_name = await sup.call("client", "try", {"host": "localhost", "port": port})
            tg.cancel_scope.cancel()

    assert by_address["got"] == "PING"
    assert by_name["got"] == "PING"
    assert received == [b"ping", b"ping"]
