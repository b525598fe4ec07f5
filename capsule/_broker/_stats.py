"""What the calls a container served came to: how many, how many failed, how long they took.

Counting only: cheap enough for every call (a few additions and a slot in a ring of
recent latencies); it judges nothing (a live update's probation does).
"""

from __future__ import annotations

import math
from array import array
from typing import Final, final

__all__ = ["SAMPLES", "CallStats"]

SAMPLES: Final = 1024
"""The latencies kept per container: the most recent ones."""


@final
class CallStats:
    """Calls one container answered: counts, and the latencies of the last SAMPLES calls."""

    __slots__ = ("_latencies", "_next", "calls", "failures")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0  # the handler raised, timed out, or the container ended meanwhile
        self._latencies = array("d")
        self._next = 0

    def record(self, seconds: float | None, *, failed: bool) -> None:
        """One call ended; ``seconds`` it took (None for a stream: its length says nothing)."""
        self.calls += 1
        self.failures += failed
        if seconds is None:
            return
        if len(self._latencies) < SAMPLES:
            self._latencies.append(seconds)
        else:
            self._latencies[self._next] = seconds
            self._next = (self._next + 1) % SAMPLES

    @property
    def samples(self) -> int:
        return len(self._latencies)

    def p99(self) -> float | None:
        """The 99th percentile of the kept latencies (seconds), or None without any."""
        return self.percentile(0.99)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) of the kept latencies (seconds), or None."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def latencies(self) -> list[float]:
        """The kept latencies (seconds), in no particular order."""
        return list(self._latencies)

    def error_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0
