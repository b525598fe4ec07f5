"""The broker's bookkeeping: a container's peer state, one call in flight, and deadlines.

State only, no decisions: the broker admits, authorizes and forwards; these hold
what it needs to answer, cancel or time out a call later.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, final

import anyio
import trio

from capsule._broker._connection import Connection
from capsule._broker._host import HostCall
from capsule._broker._rates import Rates, rates_for
from capsule._broker._stats import CallStats
from capsule._manifest._model import DEFAULT_BROKER_LIMITS, BrokerLimits
from capsule._tokens._format import TokenClaims
from capsule._tokens._grant import Grant

__all__ = [
    "WITHDRAWN",
    "Deadlines",
    "Deny",
    "Handle",
    "Peer",
    "Route",
    "ShadowMark",
    "Subscriber",
    "holds",
    "loop_clock",
    "unusable",
]

WITHDRAWN: Final = 64
"""Delegated tokens revoked before their recipient presented them, remembered per peer."""
_COMPACT_EVERY: Final = 4096  # finished calls leave heap entries behind; drop them this often


@final
class Handle:
    """An admitted token on one connection: the number the container names it by, and
    the buckets of its capabilities' ``rate`` limits (None when it has none)."""

    __slots__ = ("claims", "grant", "number", "rates", "token")

    def __init__(self, number: int, token: str, claims: TokenClaims, grant: Grant) -> None:
        self.number = number
        self.token = token
        self.claims = claims
        self.grant = grant
        self.rates: Rates | None = rates_for(grant.capabilities)


def loop_clock() -> Callable[[], float]:
    """The running event loop's clock, as one bound method: what ``anyio.current_time``
    reads (trio's clock, a MockClock included, or asyncio's ``loop.time``), without
    anyio's look-up of the backend on every reading (a few calls in each brokered call).
    Call it inside the loop; the method it returns holds for that loop's run."""
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:  # not in trio: anyio's other backend
        return asyncio.get_running_loop().time


def unusable(handle: Handle | None, number: int) -> str | None:
    """Why a handle cannot be acted under at all (whatever the action), or None."""
    if number == 0:
        return "no token it holds covers it"
    if handle is None:
        return f"handle {number} was not issued on this connection"
    if not handle.grant.alive:
        return f"token {handle.grant.token_id} is revoked"
    if time.time() >= handle.grant.expires:
        return f"token {handle.grant.token_id} expired"
    return None


def holds(peer: Peer, limit: str, what: str) -> str:
    """The reason a request past one of ``peer``'s limits is refused, naming where it is set."""
    return f"holds {what} already (limits.{limit} of [policy.{peer.feature}] in app.toml)"


class Deny(Protocol):
    """The broker's way to refuse a message: counted, audited, answered when it has an id."""

    def __call__(
        self,
        peer: Peer,
        event: str,
        reason: str,
        *,
        capability: str,
        token: str | None = None,
        request_id: int | None = None,
        **fields: Any,
    ) -> None: ...


@final
class ShadowMark:
    """What the broker holds of a container while it is a shadow variant: its version, and
    what it was kept from doing, by kind (``call``, ``stream``, ``publish``, ``delegate``,
    ``connect``, ``listen``). One mark lasts over the variant's restarts."""

    __slots__ = ("blocked", "version")

    def __init__(self, version: str) -> None:
        self.version = version
        self.blocked: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.blocked.values())


@final
class Peer:
    """The broker's state for one running container."""

    __slots__ = (
        "admitted",
        "calls",
        "calls_total",
        "conn",
        "connections",
        "denied",
        "detached",
        "feature",
        "granted",
        "handles",
        "ids",
        "landlock_abi",
        "limits",
        "messages",
        "refused",
        "requests",
        "services",
        "shadow",
        "stats",
        "subscriptions",
        "withdrawn",
    )

    def __init__(
        self,
        conn: Connection,
        feature: str,
        *,
        landlock_abi: int = 0,
        limits: BrokerLimits = DEFAULT_BROKER_LIMITS,
    ) -> None:
        self.conn = conn
        self.feature = feature
        #: what its app lets it make the broker hold (``[policy.NAME.limits]``)
        self.limits = limits
        self.subscriptions: dict[str, Subscriber] = {}  # pattern -> its one subscription
        #: the Landlock ABI its container is restricted at (4+ stops TCP connect and bind)
        self.landlock_abi = landlock_abi
        self.handles: dict[int, Handle] = {}
        self.admitted: dict[str, Handle] = {}  # token id -> handle
        self.granted: set[str] = set()  # ids of live tokens delegated to it, admitted or not
        #: tokens delegated to it and revoked before it presented them (the latest WITHDRAWN)
        self.withdrawn: dict[str, None] = {}
        self.calls: dict[int, Route] = {}  # delivered into this container, awaiting its answer
        self.requests: dict[int, Route] = {}  # made by this container, in flight
        self.services: frozenset[str] = frozenset()
        self.ids = itertools.count(1)
        self.messages = 0
        self.denied = 0
        self.refused = 0
        self.calls_total = 0
        self.stats = CallStats()  # the calls it answered (a live update's probation reads them)
        self.connections = 0  # sockets the network mediator opened for it
        self.detached = False
        #: set while it is a shadow variant: what it does outside itself is refused
        self.shadow: ShadowMark | None = None

    def __repr__(self) -> str:
        return f"<Peer {self.feature} handles={len(self.handles)} in-flight={len(self.requests)}>"


@final
class Route:
    """One call through the broker, from a container (``caller``) or the host (``host``)."""

    __slots__ = (
        "callee",
        "callee_id",
        "caller",
        "caller_id",
        "credit",
        "deadline",
        "feature",
        "host",
        "live",
        "mark",
        "sent",
        "service",
        "started",
        "stream",
        "timeout",
    )

    def __init__(
        self,
        feature: str,
        service: str,
        *,
        caller: Peer | None,
        caller_id: int,
        host: HostCall | None,
        stream: bool,
        credit: int,
        timeout: float,
        now: float,
    ) -> None:
        self.feature = feature
        self.service = service
        self.caller = caller
        self.caller_id = caller_id
        self.host = host
        self.stream = stream
        self.credit = credit
        self.timeout = timeout
        self.started = now  # by the event loop's clock (loop_clock)
        #: when the callee was sent the call: ``started``, or later for a call that waited
        #: for its container (held while the feature switched versions, or restarted)
        self.sent = self.started
        self.deadline = self.started + timeout
        self.callee: Peer | None = None
        self.callee_id = 0
        self.live = True
        self.mark = 0  # what the callee's CallStats.sent said (whether its latency counts)


@final
class Subscriber:
    """One subscription: a container's (with the grant it subscribed under) or the host's."""

    __slots__ = ("grant", "host", "pattern", "peer")

    def __init__(
        self,
        pattern: str,
        *,
        peer: Peer | None = None,
        grant: Grant | None = None,
        host: object = None,
    ) -> None:
        self.pattern = pattern
        self.peer = peer
        self.grant = grant
        self.host = host


@final
class Deadlines:
    """Routes ordered by deadline; one task expires them (lazy deletion, compacted)."""

    def __init__(self, expire: Callable[[Route], None]) -> None:
        self._heap: list[tuple[float, int, Route]] = []
        self._seq = itertools.count()
        self._expire = expire
        self._changed = anyio.Event()
        self._added = 0

    def add(self, route: Route) -> None:
        heap = self._heap
        first = heap[0][0] if heap else None
        heapq.heappush(heap, (route.deadline, next(self._seq), route))
        if first is None or route.deadline < first:
            self._changed.set()
        self._added += 1
        if self._added >= _COMPACT_EVERY:
            self._added = 0
            self._compact()

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2].live]
        heapq.heapify(self._heap)

    async def run(self) -> None:
        while True:
            heap = self._heap
            now = anyio.current_time()
            while heap and (heap[0][0] <= now or not heap[0][2].live):
                deadline, _, route = heapq.heappop(heap)
                if not route.live:
                    continue
                if route.deadline > deadline:  # a stream item moved it on
                    heapq.heappush(heap, (route.deadline, next(self._seq), route))
                    continue
                self._expire(route)
            self._changed = anyio.Event()
            if heap:
                with anyio.move_on_after(heap[0][0] - now):
                    await self._changed.wait()
            else:
                await self._changed.wait()
