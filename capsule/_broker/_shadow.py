"""A shadow variant's own actions: refused (calls, streams, delegations, connections) or
dropped (publishes) before any check, counted and audited, so a mirrored call has its
effects once, by the control.

Decides from the message's type alone: no token is looked at, no payload decoded. There
is no read-only call to let through: a capability names a service, not what the service
does, so any call may change something.
"""

from __future__ import annotations

from typing import Final

from capsule._broker._audit import AuditLog
from capsule._broker._routes import Peer, ShadowMark
from capsule._ipc._messages import (
    Connect,
    Delegate,
    Error,
    FromContainer,
    Listen,
    Publish,
    Request,
)

__all__ = ["OUTWARD", "refuse"]

OUTWARD: Final = frozenset({Request, Publish, Delegate, Connect, Listen})
"""The messages by which a container acts outside itself (Revoke only withdraws what it
delegated; Subscribe, Admit and the answers to its own calls stay its own)."""


def refuse(peer: Peer, mark: ShadowMark, msg: FromContainer, audit: AuditLog) -> None:
    """Keep ``peer``, a shadow, from the action ``msg`` (one of OUTWARD): answered with kind
    ``shadow`` (a publish, one way, is dropped), counted in ``mark`` and audited as one
    ``limit`` line per kind and flush (once a second)."""
    kind, capability = _describe(msg)
    mark.blocked[kind] = mark.blocked.get(kind, 0) + 1
    done = "dropped" if kind == "publish" else "refused"
    audit.limit(
        peer.feature,
        f"shadow-{kind}",
        f"version {mark.version} is a shadow variant: its {kind} ({capability}) was {done}",
    )
    if isinstance(msg, Publish):
        return
    peer.conn.send(
        Error(
            id=msg.id,  # type: ignore[union-attr]  # every OUTWARD message but Publish has one
            kind="shadow",
            feature=peer.feature,
            message=f"version {mark.version} is a shadow variant: it acts on nothing outside "
            f"itself ({kind} {capability} refused)",
            capability=capability,
            version=mark.version,
        )
    )


def _describe(msg: FromContainer) -> tuple[str, str]:
    """The kind of action ``msg`` is, and the capability it would use."""
    if isinstance(msg, Request):
        target = f"icc:call:{msg.feature}.{msg.service}"
        return ("stream" if msg.stream else "call"), target
    if isinstance(msg, Publish):
        return "publish", f"icc:publish:{msg.topic}"
    if isinstance(msg, Delegate):
        return "delegate", ", ".join(msg.capabilities)[:300]
    if isinstance(msg, Connect):
        return "connect", f"net:connect:{msg.host}:{msg.port}"
    if isinstance(msg, Listen):
        return "listen", f"net:listen:{msg.host}:{msg.port}"
    raise TypeError(f"{type(msg).__name__} is no outward action")  # pragma: no cover
