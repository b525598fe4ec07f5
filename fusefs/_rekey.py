"""Renewed grants: a view's mounts move from a token to its renewal, open files untouched.

Changes which token grants a mount and until when, nothing else: it never reopens a
mount that is closed (expired or revoked), and touches no file and no kernel cache.
"""

from __future__ import annotations

import msgspec

from fusefs._control import Rekey, Rekeyed
from fusefs._policy import ViewPolicy

__all__ = ["rekey"]


def rekey(policy: ViewPolicy, info: dict[str, str], message: Rekey, *, now: float) -> Rekeyed:
    """Apply ``message`` at Unix time ``now`` to ``policy``'s open mounts and to the
    /capsule/ files ``info`` (only files it already has)."""
    rekeyed: list[str] = []
    closed: dict[str, str] = {}
    for mount in policy.mounts:
        spec = mount.spec
        successor = message.tokens.get(spec.token or "")
        if successor is None:
            continue
        if mount.closed is None and policy.expiring(mount, now):
            closed[spec.view_path] = "expired"  # too late: closing (its caches dropped) now
            continue
        if mount.closed is not None:
            closed[spec.view_path] = mount.closed
            continue
        expires = message.expires.get(successor, spec.expires)
        mount.spec = msgspec.structs.replace(spec, token=successor, expires=expires)
        mount.granted = now
        rekeyed.append(spec.view_path)
    info.update((name, text) for name, text in message.info.items() if name in info)
    return Rekeyed(seq=message.seq, mounts=tuple(rekeyed), closed=closed)
