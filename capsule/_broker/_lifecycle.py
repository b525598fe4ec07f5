"""Tokens on live connections: what a revocation or a renewal does to the handles that
hold them, and to the delegations derived from them.

Must not admit a token or authorize a message, and must not block: it changes, in place,
the handles the broker admitted, and tells their containers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import final

import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._calls import Target
from capsule._broker._delegation import Delegations
from capsule._broker._routes import WITHDRAWN, Handle, Peer
from capsule._ipc._messages import Renewed
from capsule._tokens._authority import Token, TokenAuthority, revoked_reason
from capsule.errors import CapsuleError

__all__ = ["Lifecycle", "withdrawn"]

_log = structlog.get_logger("capsule.broker")


def withdrawn(peer: Peer, reason: str | None) -> bool:
    """Whether ``peer`` was refused a token delegated to it and revoked before it could
    present it: not its fault, so it does not count towards MAX_REFUSED (once each)."""
    for token_id in peer.withdrawn:
        if reason == revoked_reason(token_id):
            del peer.withdrawn[token_id]
            return True
    return False


@final
class Lifecycle:
    """Every admitted token of an app run, by id, as revocations and renewals change it."""

    def __init__(
        self,
        authority: TokenAuthority,
        audit: AuditLog,
        resolve: Callable[[str], Target | None],
        delegations: Delegations,
    ) -> None:
        self._authority = authority
        self._audit = audit
        self._resolve = resolve
        self._delegations = delegations
        self._grants: dict[str, list[Handle]] = {}  # token id -> its live handles

    def hold(self, handle: Handle) -> None:
        """``handle`` was just admitted: a revocation or renewal of its token reaches it."""
        self._grants.setdefault(handle.claims.token_id, []).append(handle)

    def revoked(self, ids: frozenset[bytes]) -> None:
        """Revocation listener: runs inside ``revoke()``, so no message is authorized after it."""
        for jti in ids:
            token_id = jti.hex()
            handles = self._grants.pop(token_id, ())
            for handle in handles:
                handle.grant.revoke()
            delegation = self._delegations.records.pop(token_id, None)
            if delegation is not None:  # its recipient forgets it: nothing grows per delegation
                target = self._resolve(delegation[1])
                recipient = None if target is None else target._live_peer()
                if recipient is not None:
                    recipient.granted.discard(token_id)
                    if token_id not in recipient.admitted:  # its Granted may be on its way
                        recipient.withdrawn[token_id] = None
                        if len(recipient.withdrawn) > WITHDRAWN:
                            del recipient.withdrawn[next(iter(recipient.withdrawn))]
            holder = handles[0].grant.feature if handles else delegation[1] if delegation else ""
            self._audit.record(
                "revoke", feature=holder, decision="revoke", token=token_id, handles=len(handles)
            )

    def renew(self, peer: Peer, previous: str, token: Token) -> int | None:
        """Move ``peer``'s handle of token ``previous`` over to its renewal ``token``, at once
        (see ``Broker.renew``); its admitted delegations follow."""
        handle = None if peer.detached else peer.admitted.pop(previous, None)
        if handle is None:
            return None
        claims = token.claims
        handle.token, handle.claims = token.text, claims
        handle.grant.renew(claims.token_id, claims.exp)
        peer.admitted[claims.token_id] = handle
        moved = [h for h in self._grants.pop(previous, ()) if h is not handle]
        if moved:  # another connection admitted it too: those handles keep the old token
            self._grants[previous] = moved
        self._grants.setdefault(claims.token_id, []).append(handle)
        self._audit.record(
            "renew",
            feature=peer.feature,
            decision="renew",
            token=claims.token_id,
            previous=previous,
            handle=handle.number,
            expires=claims.exp,
        )
        peer.conn.send(Renewed(handle=handle.number, token_id=claims.token_id, expires=claims.exp))
        self._follow(previous, token)
        return handle.number

    def _follow(self, previous: str, parent: Token) -> None:
        """Renew the admitted delegations of ``previous`` from its renewal ``parent``."""
        now = time.time()
        records = self._delegations.records
        for child, (by, to, derived_from, until) in list(records.items()):
            if derived_from != previous:
                continue
            target = self._resolve(to)
            recipient = None if target is None else target._live_peer()
            held = None if recipient is None else recipient.admitted.get(child)
            if recipient is None or held is None or not held.grant.alive:
                continue  # never admitted, or gone: it ends as it was
            if held.claims.exp >= until:
                continue  # its delegator's ttl ends it, not its parent's expiry
            old = held.claims
            try:
                renewed = self._authority.attenuate(
                    parent,
                    old.caps,
                    holder=by,
                    aud=to,
                    ttl=None if math.isinf(until) else until - now,
                    now=now,
                )
            except CapsuleError as exc:
                reason = f"the token delegated by {by} did not follow its parent's renewal: {exc}"
                _log.error("delegated token not renewed", feature=to, token=child, error=reason)
                self._audit.record("renew", feature=to, decision="fail", reason=reason, token=child)
                continue
            self._authority.revocations.record_renewal(
                old.jti, renewed.claims.jti, now=now, expires=renewed.claims.exp
            )
            records[renewed.token_id] = (by, to, parent.token_id, until)
            self.renew(recipient, child, renewed)
            self._authority.retire(old)
