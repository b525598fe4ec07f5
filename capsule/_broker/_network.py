"""The network mediator: ``ctx.connect`` and ``ctx.listen`` answered with a socket that the
supervisor opens in its own network namespace and passes into the container (SCM_RIGHTS).

Must not block the broker (names resolve in worker threads, connects are non-blocking, all
under a deadline) and must not let anything but the check decide where a socket goes: a
name is resolved once, and the socket connects to (or binds) exactly an address that was
checked. Which destinations and addresses pass is ``_netpolicy``'s rule; this module does
the I/O, the limits and the audit.

Every refusal is audited (decision ``deny``, with the feature, token, host, port and the
reason) and raises CapabilityDeniedError in the feature; every granted request is audited
(decision ``allow``) with the address used and how it ended. A socket is passed only to a
container whose Landlock ruleset denies TCP connect and bind (ABI 4+): below that, a
container could disconnect a passed socket and connect it anywhere.

Test seam: ``NetworkMediator.resolver`` is the function names are resolved with
(``system_resolver`` by default); a test may replace it on a running supervisor's broker
(``sup._broker.network.resolver = fake``) to make a name resolve where the test wants.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Final, final

import anyio
import anyio.abc
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._netpolicy import Address, Destination, address_target, destination, pin
from capsule._broker._netpolicy import screen as screen_address
from capsule._broker._routes import Deny, Handle, Peer, unusable
from capsule._ipc._channel import encode_frame
from capsule._ipc._messages import Connect, Error, Listen, Opened
from capsule._ipc._outcome import network_error
from capsule._tasks import TaskStarter
from capsule._tokens._caps import Action, Capability
from capsule.errors import ConfigError, ProtocolError

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_CONNS",
    "LANDLOCK_NET_ABI",
    "MAX_OPENING",
    "MAX_TIMEOUT",
    "RESOLVERS",
    "NetworkMediator",
    "Resolver",
    "system_resolver",
]

_log = structlog.get_logger("capsule.broker")

DEFAULT_CONNS: Final = 64
"""Sockets one container may hold open at once under capabilities without a ``conns`` limit."""
MAX_OPENING: Final = 8
"""Connects and listens one container may have resolving or connecting at once."""
CONNECT_TIMEOUT: Final = 10.0
"""Seconds a connect (resolution included) may take when the feature gives no timeout."""
MAX_TIMEOUT: Final = 120.0
"""The longest timeout a feature may ask for."""
LANDLOCK_NET_ABI: Final = 4
"""The Landlock ABI that denies TCP connect and bind: below it, no socket is passed."""
RESOLVERS: Final = 2
"""Worker threads one container may have resolving names at once: a thread stuck on a dead
DNS server keeps its place until it returns, so a feature whose names hang waits on itself
and never on another feature's resolutions."""
_BACKLOG: Final = 128

Resolver = Callable[[str, int], Sequence[str]]
"""``resolver(name, port)``: the addresses (text) a name resolves to, in preference order;
raises OSError (socket.gaierror) when it does not resolve. Runs in a worker thread."""


def system_resolver(name: str, port: int) -> list[str]:
    """The addresses ``name`` resolves to by the system's resolver (getaddrinfo), in order."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[str] = []
    for _family, _kind, _proto, _canonical, sockaddr in infos:
        text = str(sockaddr[0])
        if text not in found:
            found.append(text)
    return found


def _live_inodes() -> set[int]:
    """Inodes of this network namespace's TCP sockets that still have an open file: a socket
    every holder closed is gone, or listed with inode 0 while it winds down."""
    live: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            table = open(f"/proc/self/net/{name}", encoding="ascii")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue  # no IPv6
        with table:
            next(table, None)
            for line in table:
                fields = line.split(maxsplit=10)
                if len(fields) > 9 and fields[9] != "0":
                    live.add(int(fields[9]))
    return live


class _Refused(Exception):  # noqa: N818 - a decision, not a failure
    """The request is refused by policy; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Held:
    """A socket passed to a container, known by its inode until it is closed there."""

    inode: int
    under: str  # token id and capability text it was opened under


@final
class _PeerNet:
    """One container's sockets: those passed and still open, and the requests in progress."""

    __slots__ = ("_threads", "held", "opening", "scopes")

    def __init__(self) -> None:
        self.held: list[_Held] = []
        self.opening: Counter[str] = Counter()
        self.scopes: dict[int, anyio.CancelScope] = {}
        self._threads: anyio.CapacityLimiter | None = None

    def threads(self) -> anyio.CapacityLimiter:
        """Its own worker threads (RESOLVERS of them), made in the event loop on first use."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(RESOLVERS)
        return self._threads

    def count(self, under: str | None) -> int:
        if under is None:
            return len(self.held) + sum(self.opening.values())
        return sum(1 for held in self.held if held.under == under) + self.opening[under]


@final
class _Ask:
    """One Connect or Listen as the mediator works on it."""

    __slots__ = (
        "action", "capability", "dest", "handle", "limit", "msg", "peer", "state", "under", "word"
    )  # fmt: skip

    def __init__(self, peer: Peer, state: _PeerNet, msg: Connect | Listen) -> None:
        self.peer = peer
        self.state = state
        self.msg = msg
        listen = isinstance(msg, Listen)
        self.word = "listen" if listen else "connect"
        self.action = Action.NET_LISTEN if listen else Action.NET_CONNECT
        self.dest: Destination  # set unless refused at once
        self.handle: Handle
        self.capability = ""
        self.limit: int | None = None
        self.under = ""

    def grant(self, handle: Handle, cap: Capability) -> None:
        """Record what it is granted under: the handle, the capability and its limit."""
        self.handle = handle
        self.capability = str(cap)
        self.limit = cap.limit("conns")
        self.under = f"{handle.grant.token_id} {self.capability}"


def _capability(handle: Handle, action: Action, target: str) -> Capability:
    for cap in handle.grant.capabilities:
        if cap.kind == "net" and cap.target == target and action in cap.action_set():
            return cap
    raise LookupError(target)  # pragma: no cover - the grant allowed it, so one covers it


@final
class NetworkMediator:
    """Opens the connections and listeners features ask for, after checking their grants."""

    def __init__(self, audit: AuditLog, task_group: TaskStarter, deny: Deny) -> None:
        self._audit = audit
        self._tg = task_group
        self._deny = deny
        self._peers: dict[Peer, _PeerNet] = {}
        #: how names are resolved (a test seam: see the module docstring)
        self.resolver: Resolver = system_resolver
        self.opened = 0  # sockets passed, all containers together
        self.failed = 0  # granted requests that failed (resolution, connect, bind, timeout)

    # -- from the broker ---------------------------------------------------------------

    def request(self, peer: Peer, msg: Connect | Listen) -> None:
        """Check a Connect or Listen now; open the socket in a task of its own."""
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerNet()
        if msg.id in state.scopes:
            raise ProtocolError(f"reused request id {msg.id} while it is in flight")
        ask = _Ask(peer, state, msg)
        handle = peer.handles.get(msg.handle)
        token = None if handle is None else handle.grant.token_id
        try:
            ask.dest = destination(msg.host, msg.port)
        except ConfigError as exc:
            reason = f"{exc.message}; ask for the destination exactly as the app grants it"
            self._refuse(ask, reason, f"net:{ask.word}:{msg.host}:{msg.port}", token)
            return
        capability = f"net:{ask.word}:{ask.dest.target}"
        why = unusable(handle, msg.handle)
        if why is None and handle is not None:
            if not handle.grant.allows(ask.action, ask.dest.target, time.time()):
                why = f"no capability of token {token} covers it"
            elif peer.landlock_abi < LANDLOCK_NET_ABI:
                why = (
                    f"its container's Landlock ABI is {peer.landlock_abi}: below "
                    f"{LANDLOCK_NET_ABI} (Linux 6.7) a passed socket could be re-connected "
                    "anywhere, so no socket is passed"
                )
        if why is not None or handle is None:
            self._refuse(ask, why or "no token covers it", capability, token)
            return
        if len(state.scopes) >= MAX_OPENING:
            busy = f"{MAX_OPENING} connects or listens in progress already"
            self._audit.record(
                ask.word,
                feature=peer.feature,
                decision="deny",
                reason=busy,
                token=token,
                capability=capability,
            )
            peer.conn.send(Error(id=msg.id, kind="overloaded", feature=peer.feature, message=busy))
            return
        ask.grant(handle, _capability(handle, ask.action, ask.dest.target))
        scope = state.scopes[msg.id] = anyio.CancelScope()
        self._tg.start_soon(self._open, ask, scope)

    def cancel(self, peer: Peer, request_id: int) -> None:
        """The container gave up on a Connect or Listen: stop it (nothing is answered)."""
        state = self._peers.get(peer)
        scope = None if state is None else state.scopes.get(request_id)
        if scope is not None:
            scope.cancel()

    async def holding(self, peer: Peer) -> int:
        """Sockets passed to ``peer``'s container that are still open there, and those being
        opened for it (an on-demand feature holding one is not idle)."""
        state = self._peers.get(peer)
        if state is None:
            return 0
        if state.held:
            live = await anyio.to_thread.run_sync(_live_inodes, limiter=state.threads())
            state.held = [held for held in state.held if held.inode in live]
        return state.count(None)

    def detach(self, peer: Peer) -> None:
        """``peer``'s container ended: stop what it asked for and forget its sockets."""
        state = self._peers.pop(peer, None)
        if state is not None:
            for scope in state.scopes.values():
                scope.cancel()

    # -- refusing and answering ---------------------------------------------------------

    def _refuse(self, ask: _Ask, reason: str, capability: str, token: str | None) -> None:
        msg = ask.msg
        self._deny(
            ask.peer,
            ask.word,
            reason,
            capability=capability,
            token=token,
            request_id=msg.id,
            host=msg.host[:256],
            port=msg.port,
        )

    def _answered(self, ask: _Ask, outcome: str, address: str | None = None) -> None:
        self._audit.record(
            ask.word,
            feature=ask.peer.feature,
            decision="allow",
            token=ask.handle.grant.token_id,
            capability=ask.capability,
            host=ask.msg.host,
            port=ask.msg.port,
            address=address,
            outcome=outcome,
        )

    def _fail(self, ask: _Ask, exc: OSError, outcome: str) -> None:
        self.failed += 1
        self._answered(ask, outcome)
        ask.peer.conn.send(network_error(ask.msg.id, ask.peer.feature, exc, ask.dest.target))

    # -- opening -------------------------------------------------------------------------

    async def _open(self, ask: _Ask, scope: anyio.CancelScope) -> None:
        state = ask.state
        reserved = False
        try:
            with scope:
                try:
                    await self._check_limit(ask)
                    state.opening[ask.under] += 1
                    reserved = True
                    sock, address = await self._reach(ask)
                except _Refused as refused:
                    self._refuse(ask, refused.reason, ask.capability, ask.handle.grant.token_id)
                    return
                except TimeoutError:  # the deadline, or ETIMEDOUT from the kernel
                    self._fail(ask, TimeoutError(errno.ETIMEDOUT, "timed out"), "timed out")
                    return
                except OSError as exc:
                    self._fail(ask, exc, f"failed: {exc}")
                    return
                self._pass(ask, sock, address)
        except Exception as exc:  # a bug of ours: answer, and keep the broker running
            _log.exception("network mediator failed", feature=ask.peer.feature)
            self._fail(ask, OSError(errno.EIO, f"internal error: {exc!r}"), "internal error")
        finally:
            if reserved:
                state.opening[ask.under] -= 1
                if not state.opening[ask.under]:
                    del state.opening[ask.under]
            state.scopes.pop(ask.msg.id, None)

    async def _check_limit(self, ask: _Ask) -> None:
        """Refuse past the capability's ``conns`` (or DEFAULT_CONNS for the container), after
        counting again which of its sockets are still open."""
        state = ask.state
        under = None if ask.limit is None else ask.under
        ceiling = DEFAULT_CONNS if ask.limit is None else ask.limit
        if state.count(under) < ceiling:
            return
        live = await anyio.to_thread.run_sync(_live_inodes, limiter=state.threads())
        state.held = [held for held in state.held if held.inode in live]
        if state.count(under) >= ceiling:
            whose = "its capability allows" if ask.limit is not None else "a container may hold"
            raise _Refused(f"{ceiling} sockets are open already, as many as {whose}")

    async def _reach(self, ask: _Ask) -> tuple[socket.socket, Address]:
        """The socket, connected to or bound on the first usable address of the destination."""
        msg, dest = ask.msg, ask.dest
        timeout = CONNECT_TIMEOUT
        if isinstance(msg, Connect) and msg.timeout is not None:
            timeout = min(msg.timeout, MAX_TIMEOUT)
        with anyio.fail_after(timeout):
            if dest.literal is not None:
                candidates = [pin(dest.literal)]
            else:
                answers = await anyio.to_thread.run_sync(
                    self.resolver,
                    dest.host,
                    dest.port,
                    abandon_on_cancel=True,
                    limiter=ask.state.threads(),
                )
                candidates = self._screened(ask, answers)
            if isinstance(msg, Listen):
                return _bind_first(candidates, dest.port, msg.backlog or _BACKLOG)
            return await _connect_first(candidates, dest.port)

    def _screened(self, ask: _Ask, answers: Sequence[str]) -> list[Address]:
        """The addresses a granted name resolved to that may be used; _Refused if none."""
        dest = ask.dest
        usable: list[Address] = []
        refused: list[str] = []
        now = time.time()
        for text in answers:
            try:
                address = pin(ip_address(str(text)))
            except ValueError:
                refused.append(f"{str(text)[:64]!r} is not an address")
                continue
            why = screen_address(address, dest.host)
            literal = address_target(address, dest.port)
            if why is not None and ask.handle.grant.allows(ask.action, literal, now):
                why = None  # that address is granted literally as well
            if why is not None:
                refused.append(f"{address} {why}")
            elif address not in usable:
                usable.append(address)
        if not usable:
            found = "; ".join(refused) if refused else "no address"
            raise _Refused(f"{dest.host} resolves to {found}")
        return usable

    def _pass(self, ask: _Ask, sock: socket.socket, address: Address) -> None:
        """Hand the socket to the container (the connection closes our copy once sent)."""
        msg, peer = ask.msg, ask.peer
        try:
            inode = os.fstat(sock.fileno()).st_ino
            port = sock.getsockname()[1] if isinstance(msg, Listen) else msg.port
        except OSError as exc:
            sock.close()
            self._fail(ask, exc, f"failed: {exc}")
            return
        ask.state.held.append(_Held(inode, ask.under))
        peer.connections += 1
        self.opened += 1
        shown = address.compressed
        self._answered(ask, "opened", shown)
        lost = OSError(errno.EMFILE, "the socket could not be passed into the container")
        peer.conn.pass_socket(
            encode_frame(Opened(id=msg.id, address=shown, port=port)),
            sock,
            encode_frame(network_error(msg.id, peer.feature, lost, ask.dest.target)),
        )


def _family(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if isinstance(address, IPv6Address) else socket.AF_INET


async def _connect(address: Address, port: int) -> socket.socket:
    """A socket connected to exactly ``address``:``port`` (non-blocking, never resolving)."""
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own signature
        code = sock.connect_ex((address.compressed, port))
        if code == errno.EINPROGRESS:
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except BaseException:
        sock.close()
        raise
    if code:
        sock.close()
        raise OSError(code, os.strerror(code))
    return sock


async def _connect_first(candidates: Sequence[Address], port: int) -> tuple[socket.socket, Address]:
    """Try each checked address in turn (within the caller's deadline); the last error if
    none answers."""
    error: OSError | None = None
    for address in candidates:
        try:
            return await _connect(address, port), address
        except OSError as exc:
            error = exc
    raise error or OSError(errno.EHOSTUNREACH, "no address to connect to")


def _bind_first(
    candidates: Sequence[Address], port: int, backlog: int
) -> tuple[socket.socket, Address]:
    """A socket listening on the first checked address that can be bound."""
    error: OSError | None = None
    for address in candidates:
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if isinstance(address, IPv6Address):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address.compressed, port))
            sock.listen(backlog)
            sock.setblocking(False)  # noqa: FBT003 - the socket API's own signature
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock, address
    raise error or OSError(errno.EADDRNOTAVAIL, "no address to listen on")
