"""The broker: admits tokens, authorizes every message against its handle's grant, and
forwards calls, stream items and events between containers and the host (and hands
Connect and Listen to its network mediator, ``_network``).

Must not verify a signature after admission, decode a payload, unpickle anything or
block: a decision is a dict lookup and a Grant check, made before anything is
forwarded, and a denied message never reaches its receiver.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, final

import anyio
import anyio.abc
import msgspec
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._connection import Connection, Outbox
from capsule._broker._host import HostCall, Stream, Subscription
from capsule._broker._network import NetworkMediator
from capsule._broker._routes import Deadlines, Handle, Peer, Route, Subscriber, unusable
from capsule._broker._topics import TopicIndex, valid_call, valid_pattern, valid_topic
from capsule._ipc._channel import encode_frame
from capsule._ipc._messages import (
    HOST,
    Admit,
    Admitted,
    Call,
    Cancel,
    Connect,
    Delegate,
    End,
    Error,
    Event,
    Failure,
    FromContainer,
    Granted,
    Item,
    Listen,
    More,
    Publish,
    Reply,
    Request,
    Result,
    Revoke,
    Subscribe,
)
from capsule._ipc._outcome import error_for, exception_for
from capsule._ipc._payload import NIL, decode_payload, encode_payload
from capsule._tasks import TaskStarter
from capsule._tokens._authority import TokenAuthority
from capsule._tokens._caps import Action
from capsule._tokens._grant import compile_grant
from capsule.errors import (
    CapabilityDeniedError,
    ConfigError,
    FeatureCrashedError,
    FeatureUnavailableError,
    InvalidTokenError,
    ProtocolError,
)

__all__ = ["MAX_HANDLES", "MAX_IN_FLIGHT", "MAX_REFUSED", "Broker", "Target"]

_log = structlog.get_logger("capsule.broker")

MAX_IN_FLIGHT: Final = 256
"""Requests one container may have in flight; past it, requests are refused as overloaded."""
MAX_HANDLES: Final = 256
"""Tokens one container may hold admitted at once."""
MAX_REFUSED: Final = 32
"""Invalid tokens one container may present; past it, the container is ended."""
MAX_CREDIT: Final = 1 << 16

_ACTION_WORD: Final = {
    Action.ICC_CALL: "call",
    Action.ICC_PUBLISH: "publish",
    Action.ICC_SUBSCRIBE: "subscribe",
}


class Target(Protocol):
    """A feature as the broker needs it: its live container, or why calls must fail or wait."""

    def _live_peer(self) -> Peer | None: ...

    def _check_available(self) -> None: ...

    async def _wait_peer(self) -> Peer: ...


@final
class Broker:
    """Routes every message of every container of one app run."""

    def __init__(
        self,
        authority: TokenAuthority,
        audit: AuditLog,
        resolve: Callable[[str], Target | None],
        task_group: TaskStarter,
        *,
        call_timeout: float,
    ) -> None:
        self._authority = authority
        self._verifier = authority.verifier
        self.audit = audit
        self._resolve = resolve
        self._tg = task_group
        self.call_timeout = call_timeout
        self._topics: TopicIndex[Subscriber] = TopicIndex()
        self._grants: dict[str, list[Handle]] = {}  # token id -> its live handles
        self._delegated: dict[str, tuple[str, str, str]] = {}  # token id -> (by, to, parent)
        self.deadlines = Deadlines(self._expire)
        self.outbox = Outbox()
        self.network = NetworkMediator(audit, task_group, self._deny)
        self.events = 0
        self.routed = 0
        self._dispatch: dict[type, Callable[[Peer, Any], None]] = {
            Request: self._request,
            Reply: self._reply,
            Failure: self._failure,
            Item: self._item,
            End: self._end,
            More: self._more,
            Cancel: self._cancel,
            Publish: self._publish,
            Subscribe: self._subscribe,
            Admit: self._admit,
            Delegate: self._delegate,
            Revoke: self._revoke,
            Connect: self.network.request,
            Listen: self.network.request,
        }
        authority.revocations.add_listener(self._revoked)

    # -- containers coming and going -----------------------------------------------------

    def attach(self, conn: Connection, feature: str, *, landlock_abi: int = 0) -> Peer:
        """The broker's state for a new container; ``landlock_abi`` is the Landlock ABI it is
        restricted at (the network mediator passes sockets only from ABI 4 on)."""
        return Peer(conn, feature, landlock_abi=landlock_abi)

    def dispatch(self, peer: Peer, message: FromContainer) -> None:
        """Handle one message from ``peer`` (raises ProtocolError for one it may not send)."""
        handler = self._dispatch.get(type(message))
        if handler is None:
            raise ProtocolError(f"unexpected {type(message).__name__} from a running container")
        peer.messages += 1
        handler(peer, message)

    def detach(self, peer: Peer, crashed: FeatureCrashedError) -> None:
        """``peer``'s container ended: fail the calls it was serving with ``crashed``, cancel
        the ones it made, drop its subscriptions and revoke every token it held (delegated
        ones included)."""
        if peer.detached:
            return
        peer.detached = True
        for route in list(peer.calls.values()):
            self._finish(route, error=error_for(route.caller_id, crashed))
        for route in list(peer.requests.values()):
            self._abandon(route)
        self._topics.remove_where(lambda sub: sub.peer is peer)
        self.network.detach(peer)
        for handle in list(peer.handles.values()):
            self._authority.revoke(handle.claims)
        for token_id in peer.granted:  # delegated to it, even if never presented
            self._authority.revoke(token_id)
        peer.handles.clear()

    # -- admission ---------------------------------------------------------------------

    def _admit(self, peer: Peer, msg: Admit) -> None:
        claims, reason = self._verifier.diagnose(msg.token, aud=peer.feature)
        if claims is None:
            peer.denied += 1
            peer.refused += 1
            self.audit.record(
                "admit", feature=peer.feature, decision="refuse", reason=reason or "invalid token"
            )
            if peer.refused > MAX_REFUSED:  # each costs a signature check: stop paying
                raise ProtocolError(f"presented {peer.refused} invalid tokens")
            peer.conn.send(error_for(msg.id, InvalidTokenError()))
            return
        handle = peer.admitted.get(claims.token_id)
        if handle is None:
            if len(peer.handles) >= MAX_HANDLES:
                peer.conn.send(
                    Error(
                        id=msg.id,
                        kind="overloaded",
                        feature="",
                        message=f"holds {MAX_HANDLES} tokens already",
                    )
                )
                return
            number = secrets.randbits(31) | 1
            while number in peer.handles:
                number = secrets.randbits(31) | 1
            handle = Handle(number, msg.token, claims, compile_grant(claims))
            peer.handles[number] = handle
            peer.admitted[claims.token_id] = handle
            self._grants.setdefault(claims.token_id, []).append(handle)
            self.audit.record(
                "admit",
                feature=peer.feature,
                decision="admit",
                token=claims.token_id,
                handle=number,
                capabilities=[str(c) for c in claims.caps],
                expires=claims.exp,
            )
        peer.conn.send(
            Admitted(
                id=msg.id,
                handle=handle.number,
                token_id=claims.token_id,
                capabilities=[str(c) for c in claims.caps],
                expires=claims.exp,
            )
        )

    def _revoked(self, ids: frozenset[bytes]) -> None:
        """Revocation listener: runs inside ``revoke()``, so no message is authorized after it."""
        for jti in ids:
            token_id = jti.hex()
            handles = self._grants.pop(token_id, ())
            for handle in handles:
                handle.grant.revoke()
            delegation = self._delegated.pop(token_id, None)
            holder = handles[0].grant.feature if handles else delegation[1] if delegation else ""
            self.audit.record(
                "revoke", feature=holder, decision="revoke", token=token_id, handles=len(handles)
            )

    def revoke(self, token_id: str) -> frozenset[str]:
        """Revoke a token and all derived from it (host authority)."""
        return self._authority.revoke(token_id)

    # -- authorization -----------------------------------------------------------------

    def _check(
        self,
        peer: Peer,
        number: int,
        action: Action,
        target: str,
        *,
        valid: bool,
        request_id: int | None = None,
    ) -> Handle | None:
        """The handle when it allows ``action`` on ``target`` now; else deny (audited, and
        answered when there is a ``request_id``) and return None."""
        handle = peer.handles.get(number)
        if valid and handle is not None and handle.grant.allows(action, target, time.time()):
            self.audit.allow(peer.feature, handle.grant.token_id, _ACTION_WORD[action], target)
            return handle
        word = _ACTION_WORD[action]
        token = None if handle is None else handle.grant.token_id
        if not valid:
            reason = f"{target!r} is not a valid {word} target (ASCII lower-case names only)"
        else:
            reason = unusable(handle, number) or f"no capability of token {token} covers it"
        self._deny(
            peer,
            word,
            reason,
            capability=f"icc:{word}:{target}",
            token=token,
            request_id=request_id,
            handle=number,
        )
        return None

    def _deny(
        self,
        peer: Peer,
        event: str,
        reason: str,
        *,
        capability: str,
        token: str | None = None,
        request_id: int | None = None,
        **fields: Any,
    ) -> None:
        """Count and audit a denial; answer ``request_id`` with CapabilityDeniedError data."""
        peer.denied += 1
        capability = capability[:300]
        self.audit.record(
            event,
            feature=peer.feature,
            decision="deny",
            reason=reason,
            token=token,
            capability=capability,
            **fields,
        )
        if request_id is not None:
            peer.conn.send(
                Error(
                    id=request_id,
                    kind="denied",
                    feature=peer.feature,
                    message=reason,
                    capability=capability,
                )
            )

    # -- calls -------------------------------------------------------------------------

    def _request(self, peer: Peer, msg: Request) -> None:
        target = f"{msg.feature}.{msg.service}"
        valid = valid_call(msg.feature, msg.service)
        if (
            self._check(peer, msg.handle, Action.ICC_CALL, target, valid=valid, request_id=msg.id)
            is None
        ):
            return
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
        )
        peer.requests[msg.id] = route
        self._forward(route, msg.payload, peer.feature)

    def _forward(self, route: Route, payload: msgspec.Raw, caller: str) -> None:
        target = self._resolve(route.feature)
        if target is None:
            self._fail(route, "invalid", f"no feature {route.feature!r} in this app")
            return
        callee = target._live_peer()
        if callee is not None:
            self._deliver(route, callee, payload, caller)
            return
        try:
            target._check_available()
        except FeatureUnavailableError as exc:
            self._finish(route, error=error_for(route.caller_id, exc))
            return
        self._tg.start_soon(self._deliver_when_ready, route, target, payload, caller)

    async def _deliver_when_ready(
        self, route: Route, target: Target, payload: msgspec.Raw, caller: str
    ) -> None:
        """A call to a starting or restarting feature waits, within its deadline."""
        with anyio.move_on_after(route.deadline - anyio.current_time()):
            try:
                callee = await target._wait_peer()
            except FeatureUnavailableError as exc:
                self._finish(route, error=error_for(route.caller_id, exc))
                return
            if route.live:
                self._deliver(route, callee, payload, caller)
            return
        self._fail(route, "timeout", f"was not ready within {route.timeout:g}s")

    def _deliver(self, route: Route, callee: Peer, payload: msgspec.Raw, caller: str) -> None:
        if not route.live:
            return
        if route.service not in callee.services:
            offered = ", ".join(sorted(callee.services)) or "none"
            self._fail(route, "invalid", f"has no service {route.service!r} (services: {offered})")
            return
        call_id = next(callee.ids)
        route.callee = callee
        route.callee_id = call_id
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

    def _fail(self, route: Route, kind: str, message: str) -> None:
        self._finish(
            route,
            error=Error(id=route.caller_id, kind=kind, feature=route.feature, message=message),
        )

    def _finish(
        self, route: Route, *, value: msgspec.Raw | None = None, error: Error | None = None
    ) -> None:
        """Answer the caller once and forget the route."""
        if not route.live:
            return
        route.live = False
        callee = route.callee
        if callee is not None:
            callee.calls.pop(route.callee_id, None)
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

    def _abandon(self, route: Route) -> None:
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
            route.callee = None
        what = "the stream went quiet for" if route.stream else "did not answer within"
        self._fail(route, "timeout", f"{route.service!r} {what} {route.timeout:g}s")

    # answers from the callee

    def _reply(self, peer: Peer, msg: Reply) -> None:
        route = peer.calls.get(msg.id)
        if route is not None:
            if route.stream:
                raise ProtocolError(f"answered stream call {msg.id} with a single reply")
            self._finish(route, value=msg.value)

    def _failure(self, peer: Peer, msg: Failure) -> None:
        route = peer.calls.get(msg.id)
        if route is not None:
            self._finish(
                route,
                error=Error(
                    id=route.caller_id,
                    kind="remote",
                    feature=peer.feature,
                    message=msg.message,
                    type=msg.type,
                    traceback=msg.traceback,
                ),
            )

    def _item(self, peer: Peer, msg: Item) -> None:
        route = peer.calls.get(msg.id)
        if route is None:
            return  # the caller cancelled while it was on its way
        if not route.stream:
            raise ProtocolError(f"sent a stream item for call {msg.id}, which is not a stream")
        if route.credit <= 0:
            raise ProtocolError(f"sent more items on stream {msg.id} than it was given credit for")
        route.credit -= 1
        route.deadline = anyio.current_time() + route.timeout
        if route.caller is not None:
            route.caller.conn.send(Item(id=route.caller_id, value=msg.value))
        elif route.host is not None:
            route.host.item(msg.value)

    def _end(self, peer: Peer, msg: End) -> None:
        route = peer.calls.get(msg.id)
        if route is not None:
            if not route.stream:
                raise ProtocolError(f"ended call {msg.id}, which is not a stream")
            self._finish(route)

    # from the caller

    def _more(self, peer: Peer, msg: More) -> None:
        route = peer.requests.get(msg.id)
        if route is not None and route.stream:
            self._grant_credit(route, msg.n)

    def _grant_credit(self, route: Route, n: int) -> None:
        if not route.live or n <= 0:
            return
        route.credit = min(route.credit + n, MAX_CREDIT)
        callee = route.callee
        if callee is not None:
            callee.conn.send(More(id=route.callee_id, n=n))

    def _cancel(self, peer: Peer, msg: Cancel) -> None:
        route = peer.requests.get(msg.id)
        if route is not None:
            self._abandon(route)
        else:
            self.network.cancel(peer, msg.id)

    # -- events ------------------------------------------------------------------------

    def _publish(self, peer: Peer, msg: Publish) -> None:
        valid = valid_topic(msg.topic)
        if self._check(peer, msg.handle, Action.ICC_PUBLISH, msg.topic, valid=valid):
            self._deliver_event(msg.topic, msg.payload, peer.feature)

    def _deliver_event(self, topic: str, payload: msgspec.Raw, sender: str) -> int:
        subs = self._topics.matching(topic)
        if not subs:
            return 0
        self.events += 1
        frame: bytes | None = None
        now = time.time()
        delivered = 0
        for sub in subs:
            grant = sub.grant
            if grant is not None and not grant.allows(Action.ICC_SUBSCRIBE, sub.pattern, now):
                self._topics.remove(sub.pattern, sub)
                continue
            if sub.peer is not None:
                if frame is None:
                    frame = encode_frame(Event(topic=topic, payload=payload, sender=sender))
                delivered += sub.peer.conn.put(frame, droppable=True)
            elif isinstance(sub.host, Subscription):
                delivered += sub.host.offer(topic, payload, sender)
        return delivered

    def _subscribe(self, peer: Peer, msg: Subscribe) -> None:
        valid = valid_pattern(msg.pattern)
        handle = self._check(
            peer, msg.handle, Action.ICC_SUBSCRIBE, msg.pattern, valid=valid, request_id=msg.id
        )
        if handle is None:
            return
        self._topics.add(msg.pattern, Subscriber(msg.pattern, peer=peer, grant=handle.grant))
        peer.conn.send(Result(id=msg.id, value=NIL))

    # -- delegation --------------------------------------------------------------------

    def _delegate(self, peer: Peer, msg: Delegate) -> None:
        handle = peer.handles.get(msg.handle)
        why = unusable(handle, msg.handle)
        if handle is None or why is not None:
            self._deny(
                peer,
                "delegate",
                why or f"handle {msg.handle} was not issued on this connection",
                capability=", ".join(msg.capabilities),
                token=None if handle is None else handle.grant.token_id,
                request_id=msg.id,
            )
            return
        target = self._resolve(msg.to)
        recipient = None if target is None else target._live_peer()
        if recipient is None:
            why = "is not part of this app" if target is None else "is not running"
            peer.conn.send(Error(id=msg.id, kind="unavailable", feature=msg.to, message=why))
            return
        try:
            token = self._authority.attenuate(
                handle.token, msg.capabilities, holder=peer.feature, aud=msg.to, ttl=msg.ttl
            )
        except CapabilityDeniedError as exc:
            self._deny(
                peer,
                "delegate",
                exc.reason,
                capability=exc.capability,
                token=handle.grant.token_id,
                request_id=msg.id,
                to=msg.to,
            )
            return
        except (ConfigError, InvalidTokenError) as exc:
            peer.conn.send(Error(id=msg.id, kind="invalid", feature=peer.feature, message=str(exc)))
            return
        self._delegated[token.token_id] = (peer.feature, msg.to, handle.grant.token_id)
        self.audit.record(
            "delegate",
            feature=peer.feature,
            decision="delegate",
            token=token.token_id,
            parent=handle.grant.token_id,
            to=msg.to,
            capabilities=[str(c) for c in token.claims.caps],
            expires=token.claims.exp,
        )
        recipient.granted.append(token.token_id)
        recipient.conn.send(Granted(token=token.text, sender=peer.feature))
        peer.conn.send(Result(id=msg.id, value=encode_payload(token.token_id, "a token id")))

    def _revoke(self, peer: Peer, msg: Revoke) -> None:
        record = self._delegated.get(msg.token_id)
        if record is None or record[0] != peer.feature:
            reason = f"token {msg.token_id} was not delegated by {peer.feature}"
            self._deny(
                peer, "revoke", reason, capability="revoke", request_id=msg.id, token=msg.token_id
            )
            return
        revoked = self._authority.revoke(msg.token_id)
        peer.conn.send(Result(id=msg.id, value=encode_payload(len(revoked), "a count")))

    # -- the host's side ---------------------------------------------------------------

    def _host_route(
        self, feature: str, service: str, payload: Any, timeout: float, window: int
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
        )
        self._forward(route, raw, HOST)
        return route, call

    async def host_call(self, feature: str, service: str, payload: Any, limit: float) -> Any:
        route, call = self._host_route(feature, service, payload, limit, 0)
        try:
            await call.done.wait()
        except BaseException:
            self._abandon(route)
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
            grant_more=lambda n: self._grant_credit(route, n),
            cancel=lambda: self._abandon(route),
        )

    def host_publish(self, topic: str, payload: Any) -> int:
        if not valid_topic(topic):
            raise ConfigError(
                f"topic {topic!r}: expected dot-separated lower-case names, e.g. spell.checked"
            )
        raw = encode_payload(payload, f"the event on {topic}")
        return self._deliver_event(topic, raw, HOST)

    def host_subscribe(self, pattern: str, buffer: int) -> Subscription:
        if not valid_pattern(pattern):
            raise ConfigError(
                f"pattern {pattern!r}: expected a topic, or a topic prefix ending in '.*'"
            )
        subscriber = Subscriber(pattern)

        def closed(_: Subscription) -> None:
            self._topics.remove(pattern, subscriber)

        subscription = Subscription(pattern, buffer, closed)
        subscriber.host = subscription
        self._topics.add(pattern, subscriber)
        return subscription
