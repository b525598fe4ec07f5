"""What the variants of an experiment came to: a row of figures per variant, and how sure
the difference between a candidate and the control is.

Figures and arithmetic only, from what the broker counted per container (and its cgroup
read); it judges nothing (the guards are the live updates' probation) and changes nothing.

The error rates are compared by Newcombe's hybrid score interval (method 10 of Newcombe,
1998: the Wilson score interval of each rate, combined), which holds up at the small
rates and small samples an experiment starts with. Latencies are compared by a normal
approximation on the difference of the mean latencies (Welch's standard error), over the
latencies the broker keeps per container (its last 1,024 calls): cheap and fair once each
side has a few dozen calls; it says nothing of the tails, which p99 shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:  # annotations only: the command line decodes VariantsStatus without these
    from capsule._broker._stats import CallStats
    from capsule._supervisor._instance import Instance

__all__ = [
    "Interval",
    "Tally",
    "VariantStatistics",
    "VariantsStatus",
    "latency_diff",
    "rate_diff",
    "variant_row",
]

Z95: Final = 1.959963984540054


@final
@dataclass(frozen=True, slots=True)
class Interval:
    """A difference (candidate minus control) and its 95 % confidence interval."""

    estimate: float
    low: float
    high: float

    def render(self, scale: float = 1.0, unit: str = "") -> str:
        return (
            f"{self.estimate * scale:+.2f}{unit} "
            f"[{self.low * scale:+.2f}, {self.high * scale:+.2f}]{unit}"
        )


def wilson(failures: int, calls: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``failures`` in ``calls``."""
    if calls == 0:
        return 0.0, 1.0
    p = failures / calls
    denom = 1 + z * z / calls
    centre = (p + z * z / (2 * calls)) / denom
    half = z * math.sqrt(p * (1 - p) / calls + z * z / (4 * calls * calls)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_diff(control: tuple[int, int], candidate: tuple[int, int]) -> Interval | None:
    """The candidate's error rate minus the control's, each given as (failures, calls),
    with Newcombe's hybrid score interval; None while a side has no calls."""
    (f1, n1), (f2, n2) = control, candidate
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = f1 / n1, f2 / n2
    l1, u1 = wilson(f1, n1)
    l2, u2 = wilson(f2, n2)
    d = p2 - p1
    return Interval(
        d,
        d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2),
        d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2),
    )


def latency_diff(control: list[float], candidate: list[float]) -> Interval | None:
    """The candidate's mean latency minus the control's (seconds), with a normal
    approximation interval; None with fewer than two latencies a side."""
    if len(control) < 2 or len(candidate) < 2:
        return None
    import statistics  # noqa: PLC0415 - here only: `capsule ps` decodes VariantsStatus

    m1, m2 = statistics.fmean(control), statistics.fmean(candidate)
    v1 = statistics.variance(control) / len(control)
    se = math.sqrt(v1 + statistics.variance(candidate) / len(candidate))
    d = m2 - m1
    return Interval(d, d - Z95 * se, d + Z95 * se)


@final
@dataclass(slots=True)
class Tally:
    """The calls one variant answered since the experiment began, over its containers
    (the counts a container had before are left out)."""

    _stats: list[tuple[CallStats, int, int]] = field(default_factory=list)

    def watch(self, stats: CallStats) -> None:
        """Count this container's calls from now on (once; a restart adds another)."""
        if all(s is not stats for s, _, _ in self._stats):
            self._stats.append((stats, stats.calls, stats.failures))

    @property
    def calls(self) -> int:
        return sum(s.calls - base for s, base, _ in self._stats)

    @property
    def failures(self) -> int:
        return sum(s.failures - base for s, _, base in self._stats)

    @property
    def current(self) -> CallStats | None:
        return self._stats[-1][0] if self._stats else None


@final
@dataclass(frozen=True, slots=True)
class VariantStatistics:
    """One variant of an experiment: its share, container and figures. Latencies are over
    its current container's last 1,024 calls; memory and cpu come from its cgroup."""

    version: str
    role: str  # "control", "candidate" or "shadow"
    share: float  # percent of the keys
    state: str  # "running", "restarting", "stopped"
    pid: int | None
    calls: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    crashes: int
    memory_current: int | None
    cpu_usage_ns: int | None
    storage: str  # its private storage directory
    #: what a shadow was kept from doing outside itself, by kind (call, stream, publish,
    #: delegate, connect, listen); empty for the control and a candidate not in shadow mode
    blocked: dict[str, int] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class VariantsStatus:
    """An experiment of one feature: its variants and, per candidate, the difference to the
    control (error rate as a fraction, mean latency in seconds) with 95 % intervals."""

    feature: str
    sticky: str
    shadow: bool
    variants: tuple[VariantStatistics, ...]
    error_rate_diff: dict[str, Interval | None]
    latency_diff: dict[str, Interval | None]
    ended: str | None = None  # why it ended (promoted, aborted), or None while it runs

    def table(self) -> str:
        """The status as a text table (``capsule variants status``)."""
        head = f"{self.feature}: sticky={self.sticky}{' shadow' if self.shadow else ''}"
        if self.ended is not None:
            head += f" ({self.ended})"
        lines = [
            head,
            f"{'VERSION':<12}{'ROLE':<10}{'SHARE':>7}  {'STATE':<11}{'CALLS':>7}{'ERRORS':>7}"
            f"{'P50 ms':>9}{'P99 ms':>9}{'MEM MiB':>9}{'CPU s':>8}",
        ]
        lines.extend(
            f"{v.version:<12}{v.role:<10}{v.share:>6.2f}%  {v.state:<11}{v.calls:>7}"
            f"{v.errors:>7}{_ms(v.p50_ms):>9}{_ms(v.p99_ms):>9}"
            f"{_mib(v.memory_current):>9}{_cpu(v.cpu_usage_ns):>8}"
            for v in self.variants
        )
        for version, diff in self.error_rate_diff.items():
            rate = "n/a" if diff is None else diff.render(100, " pp")
            latency = self.latency_diff.get(version)
            mean = "n/a" if latency is None else latency.render(1000, " ms")
            lines.append(f"{version} - control: error rate {rate}; mean latency {mean} (95 %)")
        for v in self.variants:
            if v.blocked:
                kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(v.blocked.items()))
                total = sum(v.blocked.values())
                lines.append(f"{v.version} shadow: blocked {total} ({kinds})")
        return "\n".join(lines)


def variant_row(  # noqa: PLR0917 - one row's columns, in the table's order
    version: str,
    role: str,
    share: float,
    state: str,
    instance: Instance | None,
    calls: int,
    errors: int,
    crashes: int,
    storage: str,
    blocked: dict[str, int] | None = None,
) -> VariantStatistics:
    """The row of one variant; its latencies, pid and cgroup figures from ``instance``."""
    live = instance is not None and not instance.ended.is_set()
    stats = instance.peer.stats if live and instance is not None else None
    cgroup = instance.statistics() if live and instance is not None else None
    p50 = None if stats is None else stats.percentile(0.5)
    p99 = None if stats is None else stats.p99()
    return VariantStatistics(
        version=version,
        role=role,
        share=share,
        state=state,
        pid=instance.pid if live and instance is not None else None,
        calls=calls,
        errors=errors,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        crashes=crashes,
        memory_current=None if cgroup is None else cgroup.memory_current,
        cpu_usage_ns=None if cgroup is None else cgroup.cpu_usage_ns,
        storage=storage,
        blocked=dict(blocked or {}),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}"


def _cpu(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"
