"""Probation: whether a new version of a feature does as well as the one it replaced.

Judges figures only (calls, failures, latencies the broker counted per container); it
switches, stops and audits nothing (the update does, with the verdict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, final

from capsule._broker._stats import CallStats
from capsule._manifest._model import P99_FLOOR, UpdatePolicy

__all__ = ["Probation"]


@final
@dataclass(slots=True)
class Probation:
    """The figures of one new version since it took over, against the old one's baseline."""

    policy: UpdatePolicy
    baseline_p99: float | None  # the old version's p99 latency (seconds) when it was replaced
    crashes: int = 0
    _stats: list[CallStats] = field(default_factory=list)  # each container of the new version

    def watch(self, stats: CallStats, *, settle: bool = True) -> None:
        """Count the calls of a container of the new version too (one per restart). With
        ``settle`` (it takes over a route, and the calls held meanwhile reach it at once),
        it settles first: the latencies of the calls that queued up in it as it took over
        are left out (its failures count from its first call). A variant, given its share
        of calls as they come, has no such backlog: every latency counts."""
        if all(s is not stats for s in self._stats):
            if settle:
                stats.settle()
            self._stats.append(stats)

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self._stats)

    @property
    def failures(self) -> int:
        return sum(s.failures for s in self._stats)

    def p99(self) -> float | None:
        """The new version's p99 latency over the calls of its current container."""
        return self._stats[-1].p99() if self._stats else None

    def crashed(self) -> bool:
        """Count a crash; True once there are as many as the policy tolerates."""
        self.crashes += 1
        return self.crashes >= self.policy.crashes

    def verdict(self) -> str | None:
        """Why the new version fails its probation now (error rate, latency), or None."""
        policy = self.policy
        calls = self.calls
        if calls < policy.min_calls:
            return None
        rate = self.failures / calls
        if rate >= policy.error_rate:
            return (
                f"{self.failures} of {calls} calls failed ({rate:.0%}, the limit is "
                f"{policy.error_rate:.0%} over at least {policy.min_calls} calls)"
            )
        p99 = self.p99()
        current = self._stats[-1] if self._stats else None
        if (
            p99 is not None
            and self.baseline_p99 is not None
            and current is not None
            and current.samples >= policy.min_calls
        ):
            limit = max(policy.p99_ratio * self.baseline_p99, P99_FLOOR)
            if p99 > limit:
                return (
                    f"p99 latency {p99 * 1000:.1f} ms is over {policy.p99_ratio:g} times the "
                    f"old version's {self.baseline_p99 * 1000:.1f} ms (limit {limit * 1000:.1f} ms)"
                )
        return None

    def figures(self) -> dict[str, Any]:
        """What the audit records with a verdict."""
        p99 = self.p99()
        return {
            "calls": self.calls,
            "failures": self.failures,
            "crashes": self.crashes,
            "settled": sum(s.settled for s in self._stats),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "baseline_p99_ms": None
            if self.baseline_p99 is None
            else round(self.baseline_p99 * 1000, 3),
        }
