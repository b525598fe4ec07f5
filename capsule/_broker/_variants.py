"""An experiment as the broker routes it: the split's table, what a call is keyed by, and
the container serving each variant but the control.

Routing only, per call: it starts, stops and judges nothing (the supervisor's experiment
does, and changes what this holds between calls, never during one).
"""

from __future__ import annotations

from typing import final

from capsule._broker._bucketing import KeyRule, Split
from capsule._broker._routes import Peer

__all__ = ["VariantRoutes"]


@final
class VariantRoutes:
    """Where the calls to one feature go while it runs variants side by side.

    ``peers[i]`` serves variant ``i`` of ``split`` (None for the control, the feature's
    own container, and for a variant between containers: its calls go to the control).
    With ``shadow``, the calls a candidate's buckets hold are served by the control and
    mirrored to the candidate, whose answers are only measured."""

    __slots__ = ("control", "peers", "rule", "shadow", "split")

    def __init__(self, split: Split, rule: KeyRule, *, control: int, shadow: bool) -> None:
        self.split = split
        self.rule = rule
        self.control = control
        self.shadow = shadow
        self.peers: list[Peer | None] = [None] * len(split.names)

    def set_split(self, split: Split) -> None:
        """A new split (the table built beforehand: swapping it is one assignment)."""
        self.peers += [None] * (len(split.names) - len(self.peers))
        self.split = split

    def choose(self, caller: str, payload: bytes, key: str | None) -> Peer | None:
        """The live container of the candidate this call's key goes to, or None for the
        control (the key's variant is the control, or its container is not serving)."""
        index = self.split.variant_of(self.rule.key(caller, payload, key))
        if index == self.control:
            return None
        peer = self.peers[index]
        if peer is None or peer.detached:
            return None
        return peer
