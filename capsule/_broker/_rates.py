"""The ``rate`` limit of icc capabilities: a token bucket per capability of one admitted token.

Decides only whether one more message fits under the rate now; it authorizes nothing
(the grant does, first), and answers, counts and audits nothing (the broker does).

``icc:call:dictionary.lookup?rate=N`` lets its holder send N messages a second under that
capability: a bucket of N tokens, full at admission and refilled at N a second, each
message taking one. The buckets belong to the handle, that is to one token admitted by
one container: each caller has its own. A message is charged to the first capability of
the token that covers it and has a token left; one covered by a capability without a
``rate`` is never limited; ``rate=0`` allows nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, final

from capsule._tokens._caps import Action, Capability, target_covers

__all__ = ["MAX_TARGETS", "Rates", "rates_for"]

MAX_TARGETS: Final = 1024
"""Targets whose covering buckets are remembered per handle (then forgotten, all at once)."""


@final
class _Bucket:
    """One capability's tokens: ``level`` of at most ``rate``, as of ``at``."""

    __slots__ = ("at", "capability", "level", "rate")

    def __init__(self, capability: Capability, rate: int, now: float) -> None:
        self.capability = capability
        self.rate = rate
        self.level: float = rate
        self.at = now

    def take(self, now: float) -> bool:
        level = self.level + (now - self.at) * self.rate
        level = min(level, self.rate)
        self.at = now
        if level < 1:
            self.level = level
            return False
        self.level = level - 1
        return True


@final
class Rates:
    """The buckets of one admitted token's rate-limited capabilities."""

    __slots__ = ("_buckets", "_capabilities", "_clock", "_covering")

    def __init__(
        self, capabilities: tuple[Capability, ...], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._capabilities = tuple(c for c in capabilities if c.kind == "icc")
        now = clock()
        self._buckets = {
            cap: _Bucket(cap, rate, now)
            for cap in self._capabilities
            if (rate := cap.limit("rate")) is not None
        }
        #: (action, target) -> the buckets covering it, or None when a capability without a
        #: rate covers it
        self._covering: dict[tuple[Action, str], tuple[_Bucket, ...] | None] = {}

    def _find(self, action: Action, target: str) -> tuple[_Bucket, ...] | None:
        buckets: list[_Bucket] = []
        for cap in self._capabilities:
            if action in cap.action_set() and target_covers("icc", cap.target, target):
                bucket = self._buckets.get(cap)
                if bucket is None:
                    return None
                buckets.append(bucket)
        return tuple(buckets)

    def over(self, action: Action, target: str) -> Capability | None:
        """Take one token for a message (already authorized) of ``action`` on ``target``; the
        capability it is over the rate of, or None when it may go."""
        key = (action, target)
        try:
            buckets = self._covering[key]
        except KeyError:
            if len(self._covering) >= MAX_TARGETS:
                self._covering.clear()
            buckets = self._covering[key] = self._find(action, target)
        if not buckets:  # None: not limited; (): nothing here covers it (the grant decides)
            return None
        now = self._clock()
        for bucket in buckets:
            if bucket.take(now):
                return None
        return buckets[0].capability


def rates_for(
    capabilities: tuple[Capability, ...], clock: Callable[[], float] = time.monotonic
) -> Rates | None:
    """The buckets for a token's capabilities; None when none of them has a ``rate``."""
    if not any(c.kind == "icc" and c.limit("rate") is not None for c in capabilities):
        return None
    return Rates(capabilities, clock)
