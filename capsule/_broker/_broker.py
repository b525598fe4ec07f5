"""The broker: admits tokens, authorizes every message against its handle's grant, and
forwards events between containers and the host; hands calls to its router (``_calls``),
Connect and Listen to its network mediator (``_network``), Delegate and Revoke to its
delegations (``_delegation``), and what revocation and renewal do to admitted tokens to
its lifecycle (``_lifecycle``).

Must not verify a signature after admission, decode a payload, unpickle anything or
block: a decision is a dict lookup and a Grant check, made before anything is
forwarded, and a denied message never reaches its receiver.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import msgspec

from capsule._broker._audit import AuditLog
from capsule._broker._calls import MAX_IN_FLIGHT, CallRouter, Target
from capsule._broker._connection import Connection, Outbox
from capsule._broker._delegation import Delegations
from capsule._broker._fairness import Turns
from capsule._broker._host import Stream, Subscription
from capsule._broker._lifecycle import Lifecycle, withdrawn
from capsule._broker._network import NetworkMediator
from capsule._broker._routes import Handle, Peer, Subscriber, holds, unusable
from capsule._broker._service import RESERVED, RUNTIME, reserved_topic
from capsule._broker._shadow import OUTWARD, refuse
from capsule._broker._topics import (
    TopicIndex,
    matches,
    valid_call,
    valid_pattern,
    valid_topic,
)
from capsule._ipc._channel import encode_frame
from capsule._ipc._messages import (
    HOST,
    Admit,
    Admitted,
    Cancel,
    Connect,
    Delegate,
    End,
    Error,
    Event,
    Failure,
    FromContainer,
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
from capsule._ipc._outcome import error_for
from capsule._ipc._payload import NIL, encode_payload
from capsule._manifest._model import DEFAULT_BROKER_LIMITS, BrokerLimits
from capsule._tasks import TaskStarter
from capsule._tokens._authority import Token, TokenAuthority
from capsule._tokens._caps import Action, Capability
from capsule._tokens._grant import compile_grant
from capsule.errors import (
    ConfigError,
    FeatureCrashedError,
    InvalidTokenError,
    ProtocolError,
)

__all__ = ["MAX_HANDLES", "MAX_IN_FLIGHT", "MAX_REFUSED", "Broker", "Target"]

MAX_HANDLES: Final = 256
"""Tokens one container may hold admitted at once."""
MAX_REFUSED: Final = 32
"""Invalid tokens one container may present; past it, the container is ended."""
_ACTION_WORD: Final = {
    Action.ICC_CALL: "call",
    Action.ICC_PUBLISH: "publish",
    Action.ICC_SUBSCRIBE: "subscribe",
}


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
        limits: Mapping[str, BrokerLimits] | None = None,
    ) -> None:
        self._authority = authority
        self._limits = dict(limits or {})  # feature -> its [policy.NAME.limits]
        self._verifier = authority.verifier
        self.audit = audit
        self.calls = CallRouter(audit, resolve, task_group, call_timeout=call_timeout)
        self._topics: TopicIndex[Subscriber] = TopicIndex()
        self.deadlines = self.calls.deadlines
        self.outbox = Outbox()
        self.turns = Turns()  # every connection's share of the event loop
        self.network = NetworkMediator(audit, task_group, self._deny)
        self._delegations = Delegations(
            authority,
            audit,
            resolve,
            deny=self._deny,
            over=self._over,
            waits=task_group,
            wait_limit=call_timeout,
        )
        self._lifecycle = Lifecycle(authority, audit, resolve, self._delegations)
        self.events = 0
        #: told of every event before it is delivered (topic, payload, sender); returns how
        #: many stopped features it is kept for (the supervisor's on-demand features)
        self.on_event: Callable[[str, msgspec.Raw, str], int] | None = None
        self._dispatch: dict[type, Callable[[Peer, Any], None]] = {
            Request: self._request,
            Reply: self.calls.reply,
            Failure: self.calls.failure,
            Item: self.calls.item,
            End: self.calls.end,
            More: self.calls.more,
            Cancel: self._cancel,
            Publish: self._publish,
            Subscribe: self._subscribe,
            Admit: self._admit,
            Delegate: self._delegations.delegate,
            Revoke: self._delegations.revoke,
            Connect: self.network.request,
            Listen: self.network.request,
        }
        authority.revocations.add_listener(self._lifecycle.revoked)

    # -- containers coming and going -----------------------------------------------------

    def attach(self, conn: Connection, feature: str, *, landlock_abi: int = 0) -> Peer:
        """The broker's state for a new container; ``landlock_abi`` is the Landlock ABI it is
        restricted at (the network mediator passes sockets only from ABI 4 on)."""
        limits = self._limits.get(feature, DEFAULT_BROKER_LIMITS)
        conn.limit_queue(limits.queue, close=limits.lagged == "close")
        action = "ended" if limits.lagged == "close" else "dropped"
        reason = (
            f"events {action}: more than {limits.queue} bytes were queued for it "
            f"(limits.queue of [policy.{feature}] in app.toml)"
        )
        conn.on_lag = lambda: self.audit.limit(feature, "queue", reason)
        return Peer(conn, feature, landlock_abi=landlock_abi, limits=limits)

    def dispatch(self, peer: Peer, message: FromContainer) -> None:
        """Handle one message from ``peer`` (raises ProtocolError for one it may not send)."""
        handler = self._dispatch.get(type(message))
        if handler is None:
            raise ProtocolError(f"unexpected {type(message).__name__} from a running container")
        peer.messages += 1
        if peer.shadow is not None and type(message) in OUTWARD:
            refuse(peer, peer.shadow, message, self.audit)
            return
        handler(peer, message)

    def detach(self, peer: Peer, crashed: FeatureCrashedError) -> None:
        """``peer``'s container ended: fail the calls it was serving with ``crashed``, cancel
        the ones it made, drop its subscriptions and revoke every token it held (delegated
        ones included)."""
        if peer.detached:
            return
        peer.detached = True
        self.calls.detach(peer, crashed)
        self._topics.remove_where(lambda sub: sub.peer is peer)
        peer.subscriptions.clear()
        self.network.detach(peer)
        for handle in list(peer.handles.values()):
            self._authority.revoke(handle.claims)
        for token_id in list(peer.granted):  # delegated to it, even if never presented
            self._authority.revoke(token_id)
        peer.handles.clear()

    def mute(self, peer: Peer) -> None:
        """Deliver no more events to ``peer`` (a version replaced but kept for a rollback);
        its subscriptions are kept for :meth:`unmute`."""
        self._topics.remove_where(lambda sub: sub.peer is peer)

    def unmute(self, peer: Peer) -> None:
        """Deliver events to ``peer`` again, on the subscriptions it had when muted."""
        if peer.detached:
            return
        for pattern, subscriber in peer.subscriptions.items():
            self._topics.add(pattern, subscriber)

    @property
    def routed(self) -> int:
        """Calls delivered to a container so far."""
        return self.calls.routed

    @property
    def call_timeout(self) -> float:
        return self.calls.call_timeout

    # -- admission ---------------------------------------------------------------------

    def _admit(self, peer: Peer, msg: Admit) -> None:
        claims, reason = self._verifier.diagnose(msg.token, aud=peer.feature)
        if claims is None:
            peer.denied += 1
            peer.refused += not withdrawn(peer, reason)
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
            self._lifecycle.hold(handle)
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

    def renew(self, peer: Peer, previous: str, token: Token) -> int | None:
        """Move ``peer``'s handle of token ``previous`` over to its renewal ``token``, at once:
        the same handle number and grant object, now under the new id and expiry (every
        message from here on is checked against them). Tells the container, audits it, and
        returns the handle number (None when ``peer`` never admitted ``previous``).

        Tokens delegated from ``previous`` and admitted by their recipient follow: each is
        derived again from ``token`` (same capabilities, audience and delegator, ending no
        later than its delegator asked) and takes over the recipient's handle the same way.
        """
        return self._lifecycle.renew(peer, previous, token)

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
            rates = handle.rates
            if rates is not None:
                over = rates.over(action, target)
                if over is not None:
                    self._over_rate(peer, action, target, over, request_id)
                    return None
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

    def _over_rate(
        self,
        peer: Peer,
        action: Action,
        target: str,
        capability: Capability,
        request_id: int | None,
    ) -> None:
        """Refuse a message past the ``rate`` of the capability it comes under: counted,
        audited (one ``limit`` line per feature and second), and answered with
        OverloadedError when it is a request; a publish is dropped."""
        word = _ACTION_WORD[action]
        reason = (
            f"{word} {target!r} is over the rate of {capability} "
            f"({capability.limit('rate')} a second)"
        )
        if request_id is not None:
            self._over(peer, request_id, "rate", reason)
            return
        peer.denied += 1
        self.audit.limit(peer.feature, "rate", f"{reason}: dropped")

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
        handle = self._check(
            peer, msg.handle, Action.ICC_CALL, target, valid=valid, request_id=msg.id
        )
        if handle is not None:
            self.calls.request(peer, msg)

    def _cancel(self, peer: Peer, msg: Cancel) -> None:
        if not self.calls.cancel(peer, msg):
            self.network.cancel(peer, msg.id)

    # -- events ------------------------------------------------------------------------

    def _publish(self, peer: Peer, msg: Publish) -> None:
        valid = valid_topic(msg.topic)
        if valid and reserved_topic(msg.topic):
            reason = f"topics beneath {RESERVED!r} are published by capsule alone"
            self._deny(peer, "publish", reason, capability=f"icc:publish:{msg.topic}")
            return
        if self._check(peer, msg.handle, Action.ICC_PUBLISH, msg.topic, valid=valid):
            self._deliver_event(msg.topic, msg.payload, peer.feature)

    def _deliver_event(self, topic: str, payload: msgspec.Raw, sender: str) -> int:
        kept = 0 if self.on_event is None else self.on_event(topic, payload, sender)
        subs = self._topics.matching(topic)
        if not subs:
            return kept
        self.events += 1
        frame: bytes | None = None
        now = time.time()
        delivered = 0
        for sub in subs:
            grant = sub.grant
            if grant is not None and not grant.allows(Action.ICC_SUBSCRIBE, sub.pattern, now):
                self._topics.remove(sub.pattern, sub)
                if sub.peer is not None and sub.peer.subscriptions.get(sub.pattern) is sub:
                    del sub.peer.subscriptions[sub.pattern]
                continue
            if sub.peer is not None:
                if frame is None:
                    frame = encode_frame(Event(topic=topic, payload=payload, sender=sender))
                delivered += sub.peer.conn.put(frame, droppable=True)
            elif isinstance(sub.host, Subscription):
                delivered += sub.host.offer(topic, payload, sender)
        return delivered + kept

    def deliver_to(self, peer: Peer, topic: str, payload: msgspec.Raw, sender: str) -> bool:
        """Deliver an event to ``peer`` alone, through a subscription of its own that still
        holds (an event kept for it while its container started); False when none does."""
        now = time.time()
        for sub in peer.subscriptions.values():
            grant = sub.grant
            if matches(sub.pattern, topic) and (
                grant is None or grant.allows(Action.ICC_SUBSCRIBE, sub.pattern, now)
            ):
                frame = encode_frame(Event(topic=topic, payload=payload, sender=sender))
                return bool(peer.conn.put(frame, droppable=True))
        return False

    def _subscribe(self, peer: Peer, msg: Subscribe) -> None:
        valid = valid_pattern(msg.pattern)
        handle = self._check(
            peer, msg.handle, Action.ICC_SUBSCRIBE, msg.pattern, valid=valid, request_id=msg.id
        )
        if handle is None:
            return
        held = peer.subscriptions.get(msg.pattern)
        if held is not None:  # the same pattern again is the same subscription
            held.grant = handle.grant  # now under the handle just checked
            peer.conn.send(Result(id=msg.id, value=NIL))
            return
        if len(peer.subscriptions) >= peer.limits.subscriptions:
            subs = f"{peer.limits.subscriptions} subscriptions"
            self._over(peer, msg.id, "subscriptions", holds(peer, "subscriptions", subs))
            return
        subscriber = Subscriber(msg.pattern, peer=peer, grant=handle.grant)
        peer.subscriptions[msg.pattern] = subscriber
        self._topics.add(msg.pattern, subscriber)
        peer.conn.send(Result(id=msg.id, value=NIL))

    def _over(self, peer: Peer, request_id: int, limit: str, reason: str) -> None:
        """Refuse a request past one of ``peer``'s limits: OverloadedError in the container,
        one aggregated audit line however often it tries."""
        peer.denied += 1
        self.audit.limit(peer.feature, limit, reason)
        peer.conn.send(
            Error(id=request_id, kind="overloaded", feature=peer.feature, message=reason)
        )

    # -- delegation --------------------------------------------------------------------

    def delegations(self, feature: str) -> int:
        """Tokens ``feature`` delegated that are neither revoked nor past their ttl."""
        return self._delegations.live(feature)

    # -- the host's side ---------------------------------------------------------------

    async def host_call(
        self, feature: str, service: str, payload: Any, limit: float, key: str | None = None
    ) -> Any:
        return await self.calls.host_call(feature, service, payload, limit, key)

    def host_stream(
        self, feature: str, service: str, payload: Any, timeout: float, window: int
    ) -> Stream:
        return self.calls.host_stream(feature, service, payload, timeout, window)

    def host_publish(self, topic: str, payload: Any) -> int:
        if not valid_topic(topic):
            raise ConfigError(
                f"topic {topic!r}: expected dot-separated lower-case names, e.g. spell.checked"
            )
        if reserved_topic(topic):
            raise ConfigError(f"topic {topic!r}: topics beneath {RESERVED!r} are capsule's own")
        raw = encode_payload(payload, f"the event on {topic}")
        return self._deliver_event(topic, raw, HOST)

    def announce(self, topic: str, payload: Any) -> int:
        """Publish one of the runtime's own events (``capsule.service.up``, say) from
        ``@capsule``; it reaches the subscribers whose grant covers the topic, as any event."""
        raw = encode_payload(payload, f"the event on {topic}")
        return self._deliver_event(topic, raw, RUNTIME)

    def set_limits(self, feature: str, limits: BrokerLimits | None) -> None:
        """What containers of ``feature`` attached from now on may make the broker hold (a
        feature added at run time); None forgets it."""
        if limits is None:
            self._limits.pop(feature, None)
        else:
            self._limits[feature] = limits

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
