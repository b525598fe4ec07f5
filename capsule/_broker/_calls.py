"""The broker's call routing: calls and streams between containers and from the host,
their answers, credit, cancellation and deadlines.

Routes only what the broker has already authorized: it checks no token and decodes no
payload (except the host's own request and reply, which it encodes and decodes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol, final

import anyio
import msgspec

from capsule._broker._audit import AuditLog
from capsule._broker._host import HostCall, Stream
from capsule._broker._routes import Deadlines, Peer, Route, loop_clock
from capsule._broker._variants import VariantRoutes
from capsule._ipc._messages import (
    HOST,
    Call,
    Cancel,
    End,
    Error,
    Failure,
    Item,
    More,
    Reply,
    Request,
    Result,
)
from capsule._ipc._outcome import error_for, exception_for
from capsule._ipc._payload import NIL, decode_payload, encode_payload
from capsule._tasks import TaskStarter
from capsule.errors import (
    FeatureCrashedError,
    FeatureError,
    FeatureUnavailableError,
    OverloadedError,
    ProtocolError,
)

__all__ = ["MAX_CREDIT", "MAX_IN_FLIGHT", "CallRouter", "Target"]

_FAILED: Final = frozenset({"remote", "timeout", "crashed"})
"""Kinds of answer that count as a failure of the container that served the call."""

MAX_IN_FLIGHT: Final = 256
"""Requests one container may have in flight; past it, requests are refused as overloaded."""
MAX_CREDIT: Final = 1 << 16


class Target(Protocol):
    """A feature as the broker needs it: its live container, or why calls must fail or wait;
    and, while it runs variants side by side, how its calls are split between them."""

    _variants: VariantRoutes | None

    def _live_peer(self) -> Peer | None: ...

    def _check_available(self, caller: str) -> None:
        """Raise FeatureUnavailableError (fail the call now) or OverloadedError (too many
        calls wait already, or ``caller`` woke too many features); else the call may wait
        in :meth:`_wait_peer`. Called once the broker authorized ``caller``'s request: a
        stopped on-demand feature starts here."""

    async def _wait_peer(self) -> Peer: ...


@final
class CallRouter:
    """Every call in flight of one app run, and the task that times them out."""

    def __init__(
        self,
        audit: AuditLog,
        resolve: Callable[[str], Target | None],
        task_group: TaskStarter,
        *,
        call_timeout: float,
    ) -> None:
        self.audit = audit
        self._resolve = resolve
        self._tg = task_group
        self.call_timeout = call_timeout
        self.deadlines = Deadlines(self._expire)
        self.routed = 0
        #: the event loop's clock (``loop_clock``), found at its first reading
        self.now: Callable[[], float] = self._first_now

    def _first_now(self) -> float:
        self.now = loop_clock()
        return self.now()

    def request(self, peer: Peer, msg: Request) -> None:
        """Route a request the broker has authorized."""
        if msg.id in peer.requests:
            raise ProtocolError(f"reused request id {msg.id} while it is in flight")
        if len(peer.requests) >= MAX_IN_FLIGHT:
            self.audit.record(
                "call", feature=peer.feature, decision="deny", reason="too many calls in flight"
            )
            peer.conn.send(
                Error(
                    id=msg.id,
                    kind="overloaded",
                    feature=msg.feature,
                    message=f"{MAX_IN_FLIGHT} calls in flight already",
                )
            )
            return
        timeout = self.call_timeout if msg.timeout is None else min(msg.timeout, self.call_timeout)
        route = Route(
            msg.feature,
            msg.service,
            caller=peer,
            caller_id=msg.id,
            host=None,
            stream=msg.stream,
            credit=min(msg.window, MAX_CREDIT),
            timeout=timeout,
            now=self.now(),
        )
        peer.requests[msg.id] = route
        self.forward(route, msg.payload, peer.feature)

    def forward(
        self, route: Route, payload: msgspec.Raw, caller: str, key: str | None = None
    ) -> None:
        """Send a call on to the container serving ``route.feature`` (for a feature running
        variants, the one its key goes to; ``key`` is one the host passed)."""
        target = self._resolve(route.feature)
        if target is None:
            self.fail(route, "invalid", f"no feature {route.feature!r} in this app")
            return
        variants = target._variants
        if variants is not None:
            chosen = variants.choose(caller, payload, key)
            if chosen is not None:
                if not variants.shadow:
                    self._deliver(route, chosen, payload, caller)
                    return
                if not route.stream:
                    self._mirror(route, chosen, payload, caller)
        callee = target._live_peer()
        if callee is not None:
            self._deliver(route, callee, payload, caller)
            return
        try:
            target._check_available(caller)
        except FeatureUnavailableError as exc:
            self.finish(route, error=error_for(route.caller_id, exc))
            return
        except OverloadedError as exc:  # too many calls held, or too many wakes by the caller
            self.audit.record("call", feature=caller, decision="deny", reason=str(exc))
            self.fail(route, "overloaded", str(exc))
            return
        self._tg.start_soon(self._deliver_when_ready, route, target, payload, caller)

    async def _deliver_when_ready(
        self, route: Route, target: Target, payload: msgspec.Raw, caller: str
    ) -> None:
        """A call to a starting or restarting feature waits, within its deadline."""
        with anyio.move_on_after(route.deadline - self.now()):
            try:
                callee = await target._wait_peer()
            except FeatureError as exc:  # unavailable, or its start failed
                self.finish(route, error=error_for(route.caller_id, exc))
                return
            if route.live:
                route.sent = self.now()  # the wait was not the callee's
                self._deliver(route, callee, payload, caller)
            return
        self.fail(route, "timeout", f"was not ready within {route.timeout:g}s")

    def _mirror(self, route: Route, callee: Peer, payload: msgspec.Raw, caller: str) -> None:
        """A copy of a call for a candidate in shadow mode: answered to no one, only counted
        in the candidate's statistics; its own deadline, so it cannot hold up the caller's."""
        if len(callee.calls) >= MAX_IN_FLIGHT:
            return  # a candidate that falls behind misses mirrors; the caller is not slowed
        mirror = Route(
            route.feature,
            route.service,
            caller=None,
            caller_id=0,
            host=None,
            stream=False,
            credit=0,
            timeout=route.timeout,
            now=self.now(),
        )
        self._deliver(mirror, callee, payload, caller)

    def _deliver(self, route: Route, callee: Peer, payload: msgspec.Raw, caller: str) -> None:
        if not route.live:
            return
        if route.service not in callee.services:
            offered = ", ".join(sorted(callee.services)) or "none"
            self.fail(route, "invalid", f"has no service {route.service!r} (services: {offered})")
            return
        call_id = next(callee.ids)
        route.callee = callee
        route.callee_id = call_id
        route.mark = callee.stats.sent()
        callee.calls[call_id] = route
        callee.calls_total += 1
        self.routed += 1
        callee.conn.send(
            Call(
                id=call_id,
                service=route.service,
                payload=payload,
                caller=caller,
                stream=route.stream,
                window=route.credit,
            )
        )
        self.deadlines.add(route)

    def fail(self, route: Route, kind: str, message: str) -> None:
        self.finish(
            route,
            error=Error(id=route.caller_id, kind=kind, feature=route.feature, message=message),
        )

    def finish(
        self, route: Route, *, value: msgspec.Raw | None = None, error: Error | None = None
    ) -> None:
        """Answer the caller once and forget the route."""
        if not route.live:
            return
        route.live = False
        callee = route.callee
        if callee is not None:
            callee.calls.pop(route.callee_id, None)
            latency = None if route.stream else self.now() - route.sent
            failed = error is not None and error.kind in _FAILED
            callee.stats.record(latency, failed=failed, mark=route.mark)
        caller = route.caller
        if caller is not None:
            caller.requests.pop(route.caller_id, None)
            if error is not None:
                caller.conn.send(error)
            elif route.stream:
                caller.conn.send(End(id=route.caller_id))
            else:
                caller.conn.send(Result(id=route.caller_id, value=value or NIL))
        elif route.host is not None:
            route.host.finish(value, error)

    def abandon(self, route: Route) -> None:
        """The caller gave up (cancelled, or its container ended): cancel it in the callee."""
        if not route.live:
            return
        route.live = False
        if route.caller is not None:
            route.caller.requests.pop(route.caller_id, None)
        callee = route.callee
        if callee is not None and callee.calls.pop(route.callee_id, None) is not None:
            callee.conn.send(Cancel(id=route.callee_id))

    def _expire(self, route: Route) -> None:
        callee = route.callee
        if callee is not None and callee.calls.pop(route.callee_id, None) is not None:
            callee.conn.send(Cancel(id=route.callee_id))
            callee.stats.record(route.timeout, failed=True, mark=route.mark)
            route.callee = None
        what = "the stream went quiet for" if route.stream else "did not answer within"
        self.fail(route, "timeout", f"{route.service!r} {what} {route.timeout:g}s")

    # answers from the callee

    def reply(self, peer: Peer, msg: Reply) -> None:
        route = peer.calls.get(msg.id)
        if route is not None:
            if route.stream:
                raise ProtocolError(f"answered stream call {msg.id} with a single reply")
            self.finish(route, value=msg.value)

    def failure(self, peer: Peer, msg: Failure) -> None:
        route = peer.calls.get(msg.id)
        if route is not None:
            # a shadow's handler ended by the ShadowError it met: the refusal is counted in
            # its blocked actions, not as an error of its own
            refused = peer.shadow is not None and msg.type.rpartition(".")[2] == "ShadowError"
            self.finish(
                route,
                error=Error(
                    id=route.caller_id,
                    kind="shadow" if refused else "remote",
                    feature=peer.feature,
                    message=msg.message,
                    type=msg.type,
                    traceback=msg.traceback,
                ),
            )

    def item(self, peer: Peer, msg: Item) -> None:
        route = peer.calls.get(msg.id)
        if route is None:
            return  # the caller cancelled while it was on its way
        if not route.stream:
            raise ProtocolError(f"sent a stream item for call {msg.id}, which is not a stream")
        if route.credit <= 0:
            raise ProtocolError(f"sent more items on stream {msg.id} than it was given credit for")
        route.credit -= 1
        route.deadline = self.now() + route.timeout
        if route.caller is not None:
            route.caller.conn.send(Item(id=route.caller_id, value=msg.value))
        elif route.host is not None:
            route.host.item(msg.value)

    def end(self, peer: Peer, msg: End) -> None:
        route = peer.calls.get(msg.id)
        if route is not None:
            if not route.stream:
                raise ProtocolError(f"ended call {msg.id}, which is not a stream")
            self.finish(route)

    # from the caller

    def more(self, peer: Peer, msg: More) -> None:
        route = peer.requests.get(msg.id)
        if route is not None and route.stream:
            self.grant_credit(route, msg.n)

    def grant_credit(self, route: Route, n: int) -> None:
        if not route.live or n <= 0:
            return
        route.credit = min(route.credit + n, MAX_CREDIT)
        callee = route.callee
        if callee is not None:
            callee.conn.send(More(id=route.callee_id, n=n))

    def cancel(self, peer: Peer, msg: Cancel) -> bool:
        """Cancel the call ``msg`` names; False when ``peer`` has no such call in flight."""
        route = peer.requests.get(msg.id)
        if route is None:
            return False
        self.abandon(route)
        return True

    def fail_served(self, peer: Peer, error: FeatureError) -> None:
        """Fail every call ``peer`` still serves with ``error``, and cancel it there."""
        for route in list(peer.calls.values()):
            peer.conn.send(Cancel(id=route.callee_id))
            self.finish(route, error=error_for(route.caller_id, error))

    def detach(self, peer: Peer, crashed: FeatureCrashedError) -> None:
        """``peer``'s container ended: fail the calls it was serving, cancel those it made."""
        for route in list(peer.calls.values()):
            self.finish(route, error=error_for(route.caller_id, crashed))
        for route in list(peer.requests.values()):
            self.abandon(route)

    # -- the host's side ---------------------------------------------------------------

    def _host_route(  # noqa: PLR0917 - the call's own parts, in the order a call names them
        self,
        feature: str,
        service: str,
        payload: Any,
        timeout: float,
        window: int,
        key: str | None = None,
    ) -> tuple[Route, HostCall]:
        raw = encode_payload(payload, f"the request to {feature}.{service}")
        call = HostCall(window)
        route = Route(
            feature,
            service,
            caller=None,
            caller_id=0,
            host=call,
            stream=window > 0,
            credit=window,
            timeout=timeout,
            now=self.now(),
        )
        self.forward(route, raw, HOST, key)
        return route, call

    async def host_call(
        self, feature: str, service: str, payload: Any, limit: float, key: str | None = None
    ) -> Any:
        route, call = self._host_route(feature, service, payload, limit, 0, key)
        try:
            await call.done.wait()
        except BaseException:
            self.abandon(route)
            raise
        if call.error is not None:
            raise exception_for(call.error, caller=HOST)
        return decode_payload(call.value or NIL, f"the reply of {feature}.{service}")

    def host_stream(
        self, feature: str, service: str, payload: Any, timeout: float, window: int
    ) -> Stream:
        route, call = self._host_route(feature, service, payload, timeout, max(1, window))
        return Stream(
            feature,
            service,
            call,
            grant_more=lambda n: self.grant_credit(route, n),
            cancel=lambda: self.abandon(route),
        )
