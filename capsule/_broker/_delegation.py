"""Delegation between containers: derives a narrower token from a handle for another
feature, counts each delegator's live delegations, revokes one on its delegator's word.

Must not change a handle or a grant: what a revocation or a renewal does to the tokens
recorded here is the broker's (``_lifecycle``); this only derives, records and counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import final

import anyio

from capsule._broker._audit import AuditLog
from capsule._broker._calls import Target
from capsule._broker._routes import Deny, Peer, holds, unusable
from capsule._ipc._messages import Delegate, Error, Granted, Result, Revoke
from capsule._ipc._outcome import error_for
from capsule._ipc._payload import encode_payload
from capsule._tasks import TaskStarter
from capsule._tokens._authority import TokenAuthority
from capsule.errors import (
    CapabilityDeniedError,
    ConfigError,
    FeatureUnavailableError,
    InvalidTokenError,
    OverloadedError,
)

__all__ = ["Delegations"]


@final
class Delegations:
    """Every token one container of an app run delegated to another, while it may be used."""

    def __init__(
        self,
        authority: TokenAuthority,
        audit: AuditLog,
        resolve: Callable[[str], Target | None],
        *,
        deny: Deny,
        over: Callable[[Peer, int, str, str], None],
        waits: TaskStarter,
        wait_limit: float,
    ) -> None:
        self._authority = authority
        self._waits = waits  # runs the delegations that wait for their recipient
        self._wait_limit = wait_limit
        self._audit = audit
        self._resolve = resolve
        self._deny = deny
        self._over = over  # refuses a request past a limit: (peer, request id, limit, reason)
        # token id -> (by, to, parent, until): ``until`` is when its delegator's ttl ends it
        self.records: dict[str, tuple[str, str, str, float]] = {}

    def delegate(self, peer: Peer, msg: Delegate, *, waited: bool = False) -> None:
        """Derive the token ``msg`` asks for from ``peer``'s handle and send it to its
        recipient. A recipient switching versions (or restarting) is waited for, as a call
        to it would be, once (``waited``) and up to the call timeout."""
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
        live = self.live(peer.feature)
        if live >= peer.limits.delegations:
            reason = holds(peer, "delegations", f"{live} live delegated tokens")
            self._over(peer, msg.id, "delegations", reason)
            return
        if self._audit.over_share(peer.feature):  # its delegations are always audited: slow it
            reason = (
                f"its audit lines took its share of the audit log ({self._audit.share_bytes} "
                f"bytes of {self._audit.file_bytes}, audit_share in app.toml); delegate later"
            )
            self._over(peer, msg.id, "audit_share", reason)
            return
        target = self._resolve(msg.to)
        recipient = None if target is None else target._live_peer()
        if recipient is None:
            if target is not None and not waited:
                self._wait_for(target, peer, msg)
                return
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
        until = math.inf if msg.ttl is None else token.claims.iat + msg.ttl
        self.records[token.token_id] = (peer.feature, msg.to, handle.grant.token_id, until)
        self._audit.record(
            "delegate",
            feature=peer.feature,
            decision="delegate",
            token=token.token_id,
            parent=handle.grant.token_id,
            to=msg.to,
            capabilities=[str(c) for c in token.claims.caps],
            expires=token.claims.exp,
        )
        recipient.granted.add(token.token_id)
        recipient.conn.send(Granted(token=token.text, sender=peer.feature))
        peer.conn.send(Result(id=msg.id, value=encode_payload(token.token_id, "a token id")))

    def _wait_for(self, target: Target, peer: Peer, msg: Delegate) -> None:
        """The recipient has no live container now: fail at once if it is stopped or too many
        wait already, else derive the token once it is back (a switch of versions)."""
        try:
            target._check_available(peer.feature)
        except FeatureUnavailableError as exc:
            peer.conn.send(error_for(msg.id, exc))
            return
        except OverloadedError as exc:
            peer.conn.send(Error(id=msg.id, kind="overloaded", feature=msg.to, message=str(exc)))
            return
        self._waits.start_soon(self._delegate_when_ready, target, peer, msg)

    async def _delegate_when_ready(self, target: Target, peer: Peer, msg: Delegate) -> None:
        with anyio.move_on_after(self._wait_limit):
            try:
                await target._wait_peer()
            except FeatureUnavailableError as exc:
                peer.conn.send(error_for(msg.id, exc))
                return
            self.delegate(peer, msg, waited=True)  # checked again: its handle may have ended
            return
        why = f"was not running again within {self._wait_limit:g}s"
        peer.conn.send(Error(id=msg.id, kind="unavailable", feature=msg.to, message=why))

    def live(self, feature: str) -> int:
        """Tokens ``feature`` delegated that are neither revoked nor past their ttl; forgets
        the ones whose ttl ended (their recipients' handles expire on their own)."""
        now = time.time()
        ended = [
            t for t, (by, _, _, until) in self.records.items() if by == feature and until <= now
        ]
        for token_id in ended:
            del self.records[token_id]
        return sum(1 for by, _, _, _ in self.records.values() if by == feature)

    def revoke(self, peer: Peer, msg: Revoke) -> None:
        """Revoke a token ``peer`` delegated, and all derived from it, at its request."""
        record = self.records.get(msg.token_id)
        if record is None or record[0] != peer.feature:
            reason = f"token {msg.token_id} was not delegated by {peer.feature}"
            self._deny(
                peer, "revoke", reason, capability="revoke", request_id=msg.id, token=msg.token_id
            )
            return
        revoked = self._authority.revoke(msg.token_id)
        peer.conn.send(Result(id=msg.id, value=encode_payload(len(revoked), "a count")))
