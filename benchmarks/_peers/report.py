"""The peers benchmark's own tables: each measure as capsule / peer, and idle memory.

Formats and prints only: the figures come from ``peers.py``'s run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from _common import Measure as Summary
from _common import print_table

from _peers.rows import MEASURES, SYSTEMS

__all__ = ["MemoryFigures", "comparison", "memory_table", "print_comparison"]

MIB: Final = 1024 * 1024
PEERS: Final = SYSTEMS[1:]

#: per system: (PSS of each idle worker, what is counted once and its PSS), in bytes
MemoryFigures = Mapping[str, tuple[Sequence[int], str, int]]


def _value(summary: Summary, *, rate: bool) -> float:
    return 1e6 / summary.p50_us if rate else summary.p50_us


def _shown(value: float, *, rate: bool, cold: bool) -> str:
    if rate:
        return f"{value:,.0f}/s"
    if cold:
        return f"{value / 1000:.1f} ms"
    return f"{value:.0f} us"


def comparison(summaries: Mapping[tuple[str, str], Summary]) -> list[dict[str, Any]]:
    """One entry per measure: each system's p50 (calls/s for pipelined calls) and
    capsule's figure over each peer's, with ``None`` where a peer was skipped."""
    rows: list[dict[str, Any]] = []
    for measure in MEASURES:
        capsule = _value(summaries[measure.key, "capsule"], rate=measure.rate)
        entry: dict[str, Any] = {
            "measure": measure.key,
            "label": measure.label,
            "unit": "calls/s" if measure.rate else "us p50",
            "paths": dict(measure.paths),
            "capsule": round(capsule, 2),
        }
        for peer in PEERS:
            found = summaries.get((measure.key, peer))
            value = None if found is None else _value(found, rate=measure.rate)
            entry[peer] = None if value is None else round(value, 2)
            entry[f"capsule_over_{peer}"] = None if value is None else round(capsule / value, 4)
        rows.append(entry)
    return rows


def memory_table(memory: MemoryFigures, skipped: Mapping[str, str]) -> list[dict[str, Any]]:
    """One entry per system: mean idle PSS per worker, what is shared once, and ratios."""
    capsule_mean = _mean(memory["capsule"][0])
    rows: list[dict[str, Any]] = []
    for system in SYSTEMS:
        if system not in memory:
            rows.append({"system": system, "skipped": skipped.get(system, "not measured")})
            continue
        per_worker, once_name, once = memory[system]
        mean = _mean(per_worker)
        rows.append(
            {
                "system": system,
                "workers": len(per_worker),
                "pss_per_worker_mean_bytes": round(mean),
                "pss_per_worker_max_bytes": max(per_worker),
                "once": once_name,
                "once_pss_bytes": once,
                "capsule_over_this_per_worker": round(capsule_mean / mean, 4),
            }
        )
    return rows


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_comparison(
    rows: Sequence[dict[str, Any]], memory: Sequence[dict[str, Any]], skipped: Mapping[str, str]
) -> None:
    """The headline table: each measure for each system, and capsule / peer."""
    header = ("measure", "capsule", "multiprocessing", "capsule/mp", "Ray", "capsule/Ray")
    cells: list[tuple[str, ...]] = []
    for row in rows:
        measure = next(m for m in MEASURES if m.key == row["measure"])
        cold = measure.key == "cold_start"

        def shown(value: float | None, *, cold: bool = cold, rate: bool = measure.rate) -> str:
            return "skipped" if value is None else _shown(value, rate=rate, cold=cold)

        cells.append(
            (
                f"{measure.label}{' (higher is better)' if measure.rate else ''}",
                shown(row["capsule"]),
                shown(row["multiprocessing"]),
                _ratio(row["capsule_over_multiprocessing"]),
                shown(row["ray"]),
                _ratio(row["capsule_over_ray"]),
            )
        )
    by_system = {entry["system"]: entry for entry in memory}

    def pss(system: str, key: str) -> str:
        entry = by_system[system]
        return "skipped" if "skipped" in entry else f"{entry[key] / MIB:.1f} MiB"

    def pss_ratio(system: str) -> str:
        entry = by_system[system]
        return "-" if "skipped" in entry else _ratio(entry["capsule_over_this_per_worker"])

    cells.append(
        (
            "idle memory per worker (PSS, mean)",
            pss("capsule", "pss_per_worker_mean_bytes"),
            pss("multiprocessing", "pss_per_worker_mean_bytes"),
            pss_ratio("multiprocessing"),
            pss("ray", "pss_per_worker_mean_bytes"),
            pss_ratio("ray"),
        )
    )
    cells.append(
        (
            "  counted once: zygote / forkserver / Ray's daemons",
            pss("capsule", "once_pss_bytes"),
            pss("multiprocessing", "once_pss_bytes"),
            "-",
            pss("ray", "once_pss_bytes"),
            "-",
        )
    )
    print()
    print_table(
        "capsule beside its peers: p50 (pipelined: calls/s at p50), and capsule / peer",
        header,
        cells,
        right=(1, 2, 3, 4, 5),
    )
    print("  ratios over 1 mean capsule's figure is the larger: slower, except for calls/s")
    for row in rows:
        measure = next(m for m in MEASURES if m.key == row["measure"])
        paths = "; ".join(f"{system}: {path}" for system, path in measure.paths.items())
        print(f"  {measure.label}: {paths}")
    for system, reason in skipped.items():
        print(f"  {system} skipped: {reason}")
