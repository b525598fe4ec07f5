"""Helpers shared by the benchmark scripts: timing, percentiles, tables, JSON, machine info.

Must not import capsule or fusefs, nor make a run fail: it measures and reports.

Not a benchmark itself (``nox -s bench`` skips files whose names start with ``_``).
Each script imports it as ``_common``: running ``python benchmarks/<name>.py`` puts
``benchmarks/`` first on ``sys.path``.

Conventions every benchmark follows (see ``benchmarks/README.md``):

* it measures its own **floor** in the same run and reports every measure as p50/p99
  in microseconds and as a ratio to the floor's p50;
* where the performance targets name one, the row carries it and says whether it was
  met, but the script exits 0 either way (benchmarks report, they do not gate);
* it accepts ``--json PATH`` (default ``benchmarks/results/<name>.json``) and
  ``--quick`` (fewer iterations, for a smoke run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import structlog

# ``python benchmarks/x.py`` puts benchmarks/ first on sys.path so that this module is
# found; once it is, take benchmarks/ off again, or benchmarks/fusefs.py would stand in
# for the fusefs package whenever a script (or capsule) imports it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != _HERE]

__all__ = [
    "RESULTS_DIR",
    "Job",
    "LabelledTarget",
    "Measure",
    "P99Target",
    "Target",
    "flatten",
    "format_us",
    "gc_paused",
    "machine_info",
    "parse_arguments",
    "percentile",
    "print_report",
    "print_table",
    "quiet_logs",
    "report_payload",
    "run_interleaved",
    "summarize",
    "time_batches",
    "time_each",
    "write_json",
]

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
NS_PER_US: Final = 1000.0


# -- statistics ----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between ranks.

    Same definition as ``numpy.percentile``'s default; ``values`` need not be sorted.
    """
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0 and 100, found {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


@dataclass(frozen=True)
class Target:
    """An upper bound on a measure's p50, in microseconds, and where it comes from."""

    p50_us: float
    source: str = "PERFORMANCE.md"

    def describe(self) -> str:
        return f"p50 <= {self.p50_us:g} us"


@dataclass(frozen=True)
class LabelledTarget(Target):
    """A p50 bound derived from another figure (a ratio, a rate), described in its own terms."""

    label: str = ""

    def describe(self) -> str:
        return self.label or super().describe()


@dataclass(frozen=True)
class P99Target(Target):
    """An upper bound on a measure's p99 instead, in microseconds (the tail is the promise)."""

    p99_us: float = 0.0

    def describe(self) -> str:
        return f"p99 <= {self.p99_us:g} us"


@dataclass(frozen=True)
class Measure:
    """One summarized measure: percentiles in microseconds, how many samples, a target."""

    name: str
    p50_us: float
    p99_us: float
    min_us: float
    mean_us: float
    samples: int
    calls_per_sample: int = 1
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    detail: bool = False  # a part of the row above it: indented in the table

    @property
    def met(self) -> bool | None:
        """Whether the p50 (the p99, for a :class:`P99Target`) is within the target; None
        when there is no target."""
        if self.target is None:
            return None
        if isinstance(self.target, P99Target):
            return self.p99_us <= self.target.p99_us
        return self.p50_us <= self.target.p50_us

    def ratio_to(self, floor: Measure) -> float:
        return self.p50_us / floor.p50_us


def summarize(
    name: str,
    samples_ns: Sequence[float],
    *,
    calls_per_sample: int = 1,
    target: Target | None = None,
    note: str = "",
    extra: dict[str, Any] | None = None,
    detail: bool = False,
) -> Measure:
    """Summarize per-call durations in nanoseconds into a :class:`Measure` (in µs)."""
    if not samples_ns:
        raise ValueError(f"{name}: no samples")
    to_us = [value / NS_PER_US for value in samples_ns]
    return Measure(
        name=name,
        p50_us=percentile(to_us, 50),
        p99_us=percentile(to_us, 99),
        min_us=min(to_us),
        mean_us=math.fsum(to_us) / len(to_us),
        samples=len(to_us),
        calls_per_sample=calls_per_sample,
        target=target,
        note=note,
        extra=dict(extra or {}),
        detail=detail,
    )


# -- timing --------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect garbage, then keep the cyclic collector off for the block."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_each(call: Callable[[], object], *, samples: int, warmup: int) -> list[int]:
    """Time ``call()`` one call at a time; return ``samples`` durations in nanoseconds.

    For operations of a few microseconds or more, where ``perf_counter_ns`` (tens of
    nanoseconds) is small against the call. The warm-up calls are not recorded.
    """
    clock = time.perf_counter_ns
    durations: list[int] = []
    record = durations.append
    with gc_paused():
        for _ in range(warmup):
            call()
        for _ in range(samples):
            start = clock()
            call()
            record(clock() - start)
    return durations


def time_batches(
    run_batch: Callable[[int], object], *, batch: int, samples: int, warmup: int
) -> list[float]:
    """Time ``run_batch(batch)`` ``samples`` times; return nanoseconds per call in each batch.

    For operations under a microsecond: ``run_batch(n)`` must perform the operation
    ``n`` times in a plain loop, so the clock is read once per batch, not per call.
    Each sample is a batch average, so p99 is a tail over batches, not over calls.
    """
    clock = time.perf_counter_ns
    per_call: list[float] = []
    with gc_paused():
        for _ in range(warmup):
            run_batch(batch)
        for _ in range(samples):
            start = clock()
            run_batch(batch)
            per_call.append((clock() - start) / batch)
    return per_call


@dataclass(frozen=True)
class Job:
    """One measure to take: ``run(n)`` returns ``n`` samples (nanoseconds per call).

    The other fields describe the row it becomes (see :func:`summarize`).
    """

    name: str
    samples: int
    run: Callable[[int], Sequence[float]]
    calls_per_sample: int = 1
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    detail: bool = False

    def summarize(self, samples_ns: Sequence[float]) -> Measure:
        return summarize(
            self.name,
            samples_ns,
            calls_per_sample=self.calls_per_sample,
            target=self.target,
            note=self.note,
            extra=self.extra,
            detail=self.detail,
        )


def run_interleaved(jobs: Sequence[Job], *, rounds: int) -> list[list[list[float]]]:
    """Run every job in ``rounds`` slices, round-robin; return samples per job, per round.

    On a shared, noisy machine a burst of load then spreads over every measure
    (the floor included) instead of landing on whichever one happened to be running,
    so ratios measured in the same run stay comparable. Each slice runs its own
    warm-up (the job's ``run`` does it).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, found {rounds}")
    collected: list[list[list[float]]] = [[] for _ in jobs]
    for round_index in range(rounds):
        for job, per_round in zip(jobs, collected, strict=True):
            share = job.samples // rounds + (1 if round_index < job.samples % rounds else 0)
            if share:
                per_round.append(list(job.run(share)))
    return collected


def flatten(per_round: Sequence[Sequence[float]]) -> list[float]:
    return [value for chunk in per_round for value in chunk]


# -- machine and environment ------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        return None
    return None


def _usable_cpus() -> int | None:
    affinity: Callable[[int], set[int]] | None = getattr(os, "sched_getaffinity", None)
    if affinity is None:
        return None
    return len(affinity(0))


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of the given distributions (None when one is missing)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info(packages: Iterable[str] = ()) -> dict[str, Any]:
    """What the figures were measured on: CPUs, Python, platform, package versions."""
    load: list[float] | None
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "cpu_model": _cpu_model(),
        "load_average": load,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(packages),
    }


# -- command line, report, JSON ------------------------------------------------------


def quiet_logs() -> None:
    """Supervisor log lines go to stderr, warnings and worse only: stdout holds the table."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def parse_arguments(
    name: str, description: str, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The options every benchmark takes: ``--json PATH`` and ``--quick``."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        metavar="PATH",
        help=f"where to write the JSON results (default: benchmarks/results/{name}.json)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer iterations: a smoke run, not figures to quote",
    )
    return parser.parse_args(argv)


def format_us(value: float) -> str:
    """Microseconds with about three significant digits."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _format_ratio(value: float) -> str:
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.4f}x"


def _met_text(*, met: bool | None) -> str:
    if met is None:
        return "-"
    return "yes" if met else "NO"


def print_table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Iterable[int] = (1, 2, 3),
) -> None:
    """Print ``rows`` under ``header`` between rules, each column as wide as its widest cell:
    the columns numbered in ``right`` (the figures) aligned right, the others left."""
    right_aligned = frozenset(right)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(header))
    print(title)
    print(rule)
    print(line(header))
    print(rule)
    for row in rows:
        print(line(row))
    print(rule)


def print_report(title: str, floor: Measure, measures: Sequence[Measure]) -> None:
    """Print an aligned table: the floor first, then each measure with its ratio to it."""
    header = ("measure", "p50 us", "p99 us", "p50/floor", "target", "met")
    rows: list[tuple[str, ...]] = [
        (
            f"FLOOR: {floor.name}",
            format_us(floor.p50_us),
            format_us(floor.p99_us),
            _format_ratio(1.0),
            "-",
            "-",
        )
    ]
    rows.extend(
        (
            f"  {measure.name}" if measure.detail else measure.name,
            format_us(measure.p50_us),
            format_us(measure.p99_us),
            _format_ratio(measure.ratio_to(floor)),
            measure.target.describe() if measure.target else "-",
            _met_text(met=measure.met),
        )
        for measure in measures
    )
    print_table(title, header, rows)
    for measure in measures:
        if measure.note:
            print(f"  {measure.name}: {measure.note}")
    sys.stdout.flush()


def _measure_json(measure: Measure, floor: Measure | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": measure.name,
        "p50_us": round(measure.p50_us, 4),
        "p99_us": round(measure.p99_us, 4),
    }
    if floor is not None:
        entry["ratio_to_floor_p50"] = round(measure.ratio_to(floor), 5)
        entry["target"] = measure.target.describe() if measure.target else None
        entry["target_p50_us"] = measure.target.p50_us if measure.target else None
        if isinstance(measure.target, P99Target):
            entry["target_p50_us"] = None
            entry["target_p99_us"] = measure.target.p99_us
        entry["met"] = measure.met
    entry.update(
        {
            "min_us": round(measure.min_us, 4),
            "mean_us": round(measure.mean_us, 4),
            "samples": measure.samples,
            "calls_per_sample": measure.calls_per_sample,
        }
    )
    if measure.note:
        entry["note"] = measure.note
    entry.update(measure.extra)
    return entry


def report_payload(
    benchmark: str,
    *,
    machine: dict[str, Any],
    floor: Measure,
    measures: Sequence[Measure],
    settings: dict[str, Any],
    elapsed_s: float,
) -> dict[str, Any]:
    """The JSON document: benchmark name, machine, floor, results, settings, timing."""
    return {
        "benchmark": benchmark,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings,
        "elapsed_s": round(elapsed_s, 2),
        "floor": _measure_json(floor, None),
        "results": [_measure_json(measure, floor) for measure in measures],
    }


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (creating folders); return the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path
