"""Live updates and run-time plugins: what callers see while a feature changes under them.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Measures, in one run and on one machine, each against a floor of its own taken in the
same run (three tables):

* **the switch**: a ``caller`` container calls ``counter.add`` about 1,000 times a second
  on a fixed schedule (each call in its own task, so a held call does not hold up the
  next), while ``sup.update("counter", ...)`` replaces a version holding 10 MiB of state
  (moved by ``export_state``/``import_state``). Each call's start (wall clock) and
  latency are taken in the caller's container; the switch window is read from the audit
  log (``update-start`` to ``update-switch``). Rows: the latency of the calls that
  overlap the window, of those held at the switch, and the pause the supervisor recorded.
  Floor: the same calls at rest, before the update. Target: p99 <= 50 ms, no failed call.
* **automatic rollback**: an update to a version that crashes on every call; the caller
  calls it until a call is answered by the old version again. Timed from the caller
  seeing the second crash (the failed call's completion; two is the default
  ``update.crashes``) to the first call the old version served. Floor: thawing a frozen
  container and one call to it from the host. Target: <= 100 ms.
  Beside it, a rollback by hand (``sup.rollback``) during probation: the calls held while
  the old version is thawed and the route switched back (the report's ``pause``).
* **plugin added at run time**: ``sup.install(bundle, approve=True)`` to its first call
  served, then ``sup.uninstall`` (untimed). Floor: a cold start of an eager feature
  (``sup.stop`` untimed, then ``sup.start`` + first call), as ``spawn.py`` times it.
  Target: <= 150 ms.

Must run as root or where ``capsule doctor`` reports full isolation (the freezer too).
Run: ``python benchmarks/update.py [--json PATH] [--quick]``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

# first: importing _common takes benchmarks/ off sys.path, where the app's module is
import _update_app
import trio

# isort: split
from _common import (
    Job,
    P99Target,
    Target,
    flatten,
    gc_paused,
    machine_info,
    parse_arguments,
    print_report,
    quiet_logs,
    report_payload,
    run_interleaved,
    summarize,
    write_json,
)

from capsule import Supervisor

NAME: Final = "update"
RATE: Final = 1000.0  # calls per second from the caller during a switch

SWITCH_TARGET: Final = P99Target(math.inf, p99_us=50_000.0)
ROLLBACK_TARGET: Final = Target(100_000.0)
PLUGIN_TARGET: Final = Target(150_000.0)

REST_ROW: Final = "calls at rest, ~1,000/s from a container"
SWITCH_ROW: Final = "calls overlapping the switch window (update-start .. update-switch)"
HELD_ROW: Final = "calls held at the switch"
PAUSE_ROW: Final = "pause recorded by the supervisor (update-switch pause_ms)"
THAW_ROW: Final = "thaw a frozen container + one host call to it"
ROLLBACK_ROW: Final = "automatic rollback: 2nd crash seen -> first call served by the old version"
ROLLBACK_PAUSE_ROW: Final = "calls held, as the supervisor recorded it (update-rollback pause_ms)"
BY_HAND_ROW: Final = "rollback by hand during probation: calls held (thaw + switch back)"
COLD_ROW: Final = "eager feature cold start: sup.start() + first call"
PLUGIN_ROW: Final = "plugin added at run time: install() + first call served"


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    switches: int  # updates under load (each gives its window's calls as samples)
    rest_s: float  # calls at rest before each update
    tail_s: float  # calls after the update returned
    rollbacks: int
    by_hand: int  # rollbacks by hand during probation
    thaws: int
    plugins: int
    cold_starts: int


FULL: Final = Sizes(
    rounds=5,
    switches=10,
    rest_s=0.6,
    tail_s=0.3,
    rollbacks=10,
    by_hand=10,
    thaws=30,
    plugins=20,
    cold_starts=20,
)
QUICK: Final = Sizes(
    rounds=2,
    switches=2,
    rest_s=0.3,
    tail_s=0.15,
    rollbacks=2,
    by_hand=2,
    thaws=4,
    plugins=2,
    cold_starts=2,
)


# -- the switch --------------------------------------------------------------------------------


@dataclass
class Switches:
    """What the switch rounds collected, beside their samples."""

    bundles: list[Path]
    rest_ns: list[float] = field(default_factory=list)
    calls: list[list[list[Any]]] = field(default_factory=list)  # per update: the caller's calls
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # version, start, end
    reports: list[dict[str, Any]] = field(default_factory=list)


async def _settled(sup: Supervisor, name: str, phase: str | None, limit: float = 30.0) -> None:
    """Wait until ``name``'s update is in ``phase`` (``None``: no update under way)."""
    with trio.fail_after(limit):
        while True:
            status = sup.feature(name).statistics().update
            if (status is None) if phase is None else (status or "").endswith(f"({phase})"):
                return
            if status is None:
                raise RuntimeError(f"{name}: the update ended before its {phase} phase")
            await trio.sleep(0.02)


async def _one_switch(sup: Supervisor, bundle: Path, sizes: Sizes, into: Switches) -> None:
    calls: list[list[Any]] = []

    async def pace() -> None:
        request = {"rate": RATE, "seconds": sizes.rest_s + 30.0}
        calls.extend(await sup.call("caller", "pace", request, timeout=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pace)
        # the sleeps only pace the run: the window is read from the audit log afterwards
        await trio.sleep(sizes.rest_s)
        report = await sup.update("counter", bundle, approve=True)
        await trio.sleep(sizes.tail_s)
        await sup.call("caller", "stop")
    into.calls.append(calls)
    into.reports.append(
        {"to": report.to_version, "pause_ms": round(report.pause * 1000, 3), "held": report.held}
    )
    await _settled(sup, "counter", "keep")


def switch_job(sup: Supervisor, sizes: Sizes, into: Switches) -> Job:
    """Updates under load; the samples come later, from the calls and the audit log."""

    def run(count: int) -> list[float]:
        for _ in range(count):
            bundle = into.bundles.pop(0)
            trio.from_thread.run(_one_switch, sup, bundle, sizes, into)
        return [0.0] * count  # placeholders: see classify()

    return Job(SWITCH_ROW, sizes.switches, run)


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def classify(into: Switches, audit: list[dict[str, Any]]) -> dict[str, Any]:
    """Sort each update's calls into at rest / in the window / held, by the audit times."""
    starts = {e["to_version"]: e["time"] for e in audit if e["event"] == "update-start"}
    switches = {e["to_version"]: e for e in audit if e["event"] == "update-switch"}
    window_ns: list[float] = []
    held_ns: list[float] = []
    pauses_ns: list[float] = []
    failures: list[str] = []
    in_window = 0
    rates: list[float] = []
    for calls, report in zip(into.calls, into.reports, strict=True):
        version = report["to"]
        if version not in starts or version not in switches:
            raise RuntimeError(f"no update-start/update-switch audit lines for {version}")
        begin, switch = starts[version], switches[version]
        end = switch["time"]
        pause = switch["pause_ms"] / 1000
        pauses_ns.append(switch["pause_ms"] * 1e6)
        first = min(call[0] for call in calls)
        rates.append((len(calls) - 1) / (max(call[0] for call in calls) - first))
        for started, latency, error in calls:
            finished = started + latency / 1e9
            if error:
                failures.append(error)
                continue
            if started >= first + 0.05 and finished < begin:  # after a short warm-up
                into.rest_ns.append(latency)
            elif started <= end and finished >= begin:
                window_ns.append(latency)
                in_window += 1
                if end - pause <= started <= end:
                    held_ns.append(latency)
    if not into.rest_ns or not window_ns:
        raise RuntimeError("no calls at rest or in a switch window: the caller was not paced")
    return {
        "window_ns": window_ns,
        "held_ns": held_ns or [0.0],
        "pauses_ns": pauses_ns,
        "failures": failures,
        "calls": sum(len(calls) for calls in into.calls),
        "in_window": in_window,
        "rate_per_s": round(sum(rates) / len(rates), 1),
    }


# -- the rollback --------------------------------------------------------------------------------


@dataclass
class Rollbacks:
    bundles: list[Path]
    seen: list[list[list[Any]]] = field(default_factory=list)


async def _one_rollback(sup: Supervisor, bundle: Path, into: Rollbacks) -> float:
    handle = sup.feature("counter")
    if handle.statistics().update is not None:
        await _settled(sup, "counter", "keep")
    old = handle.manifest.version
    await sup.update("counter", bundle, approve=True)
    calls = await sup.call("caller", "until_old", {"crashes": 2, "old": old}, timeout=60)
    into.seen.append(calls)
    crashes = [float(call[0]) for call in calls if call[1] is None]
    served = float(calls[-1][0])
    if len(crashes) < 2 or calls[-1][1] != old:
        raise RuntimeError(f"expected two crashes, then {old} answering: {calls}")
    await _settled(sup, "counter", None)
    return (served - crashes[1]) * 1e9


def rollback_job(sup: Supervisor, sizes: Sizes, into: Rollbacks) -> Job:
    def run(count: int) -> list[float]:
        return [
            trio.from_thread.run(_one_rollback, sup, into.bundles.pop(0), into)
            for _ in range(count)
        ]

    return Job(ROLLBACK_ROW, sizes.rollbacks, run, target=ROLLBACK_TARGET)


async def _one_by_hand(sup: Supervisor, bundle: Path) -> float:
    handle = sup.feature("counter")
    if handle.statistics().update is not None:
        await _settled(sup, "counter", "keep")
    await sup.update("counter", bundle, approve=True)
    await trio.sleep(0.1)  # the old version is frozen by now (its calls drained at once)
    report = await sup.rollback("counter")
    if report.cold:
        raise RuntimeError("a rollback during probation started the old version cold")
    await _settled(sup, "counter", None)
    return report.pause * 1e9


def by_hand_job(sup: Supervisor, sizes: Sizes, bundles: list[Path]) -> Job:
    def run(count: int) -> list[float]:
        return [trio.from_thread.run(_one_by_hand, sup, bundles.pop(0)) for _ in range(count)]

    return Job(BY_HAND_ROW, sizes.by_hand, run)


async def _thaws(sup: Supervisor, count: int) -> list[float]:
    instance = sup.feature("idle").instance
    if instance is None:
        raise RuntimeError("idle has no container")
    clock = time.perf_counter_ns
    durations: list[float] = []
    with gc_paused():
        for index in range(count + 1):  # the first one warms up
            await instance.freeze()
            begin = clock()
            await instance.thaw()
            reply = await sup.call("idle", "ping", index)
            took = clock() - begin
            if reply != index:
                raise RuntimeError(f"idle.ping answered {reply!r}, expected {index!r}")
            if index:
                durations.append(took)
    return durations


def thaw_job(sup: Supervisor, sizes: Sizes) -> Job:
    def run(count: int) -> list[float]:
        return trio.from_thread.run(_thaws, sup, count)

    return Job(THAW_ROW, sizes.thaws, run)


# -- the plugin --------------------------------------------------------------------------------


async def _installs(sup: Supervisor, bundle: Path, count: int) -> list[float]:
    clock = time.perf_counter_ns
    durations: list[float] = []
    with gc_paused():
        for index in range(count + 1):
            begin = clock()
            await sup.install(bundle, approve=True)
            reply = await sup.call("pinger", "ping", index)
            took = clock() - begin
            await sup.uninstall("pinger", drain=0)
            if reply != index:
                raise RuntimeError(f"pinger.ping answered {reply!r}, expected {index!r}")
            if index:
                durations.append(took)
    return durations


async def _cold_starts(sup: Supervisor, count: int) -> list[float]:
    clock = time.perf_counter_ns
    durations: list[float] = []
    with gc_paused():
        for index in range(count + 1):
            await sup.stop("idle")
            begin = clock()
            await sup.start("idle")
            reply = await sup.call("idle", "ping", index)
            took = clock() - begin
            if reply != index:
                raise RuntimeError(f"idle.ping answered {reply!r}, expected {index!r}")
            if index:
                durations.append(took)
    return durations


def plugin_jobs(sup: Supervisor, sizes: Sizes, bundle: Path) -> list[Job]:
    def installs(count: int) -> list[float]:
        return trio.from_thread.run(_installs, sup, bundle, count)

    def cold(count: int) -> list[float]:
        return trio.from_thread.run(_cold_starts, sup, count)

    return [
        Job(COLD_ROW, sizes.cold_starts, cold),
        Job(PLUGIN_ROW, sizes.plugins, installs, target=PLUGIN_TARGET),
    ]


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Collected:
    switches: Switches
    rollbacks: Rollbacks
    jobs: list[Job]
    samples: list[list[list[float]]]
    audit: list[dict[str, Any]]


async def run_all(root: Path, sizes: Sizes) -> Collected:
    app, good, bad, plugin = _update_app.build_app(
        root, switches=sizes.switches + sizes.by_hand, rollbacks=sizes.rollbacks
    )
    switches, rollbacks = Switches(good[: sizes.switches]), Rollbacks(bad)
    by_hand = good[sizes.switches :]
    async with app.open() as sup:
        if await sup.call("idle", "ping", "ready") != "ready":
            raise RuntimeError("idle does not echo its request")
        jobs = [
            switch_job(sup, sizes, switches),
            thaw_job(sup, sizes),
            rollback_job(sup, sizes, rollbacks),
            by_hand_job(sup, sizes, by_hand),
            *plugin_jobs(sup, sizes, plugin),
        ]
        samples = await trio.to_thread.run_sync(lambda: run_interleaved(jobs, rounds=sizes.rounds))
        audit_path = sup.audit_path
    if audit_path is None:
        raise RuntimeError("the supervisor wrote no audit log")
    return Collected(switches, rollbacks, jobs, samples, _audit(audit_path))


def _by_name(collected: Collected) -> dict[str, list[float]]:
    return {
        job.name: flatten(samples)
        for job, samples in zip(collected.jobs, collected.samples, strict=True)
    }


def _rollback_pauses(audit: list[dict[str, Any]]) -> tuple[list[float], int, list[str]]:
    lines = [  # the automatic ones: a rollback by hand is a row of its own
        e
        for e in audit
        if e["event"] == "update-rollback" and not e["reason"].startswith("rolled back by hand")
    ]
    cold = sum(1 for e in lines if e.get("cold"))
    return [e["pause_ms"] * 1e6 for e in lines], cold, [e["reason"] for e in lines]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, "Live updates, rollbacks and run-time plugins.", argv)
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capsule-bench-update-") as scratch:
        collected = trio.run(run_all, Path(scratch) / "app", sizes)
    elapsed = time.perf_counter() - started
    samples = _by_name(collected)
    mode = "quick" if args.quick else "full"

    figures = classify(collected.switches, collected.audit)
    rest = summarize(REST_ROW, collected.switches.rest_ns)
    switch_rows = [
        summarize(
            SWITCH_ROW,
            figures["window_ns"],
            target=SWITCH_TARGET,
            note=f"10 MiB of state moved; {figures['in_window']} calls over "
            f"{sizes.switches} updates",
        ),
        summarize(HELD_ROW, figures["held_ns"], detail=True),
        summarize(PAUSE_ROW, figures["pauses_ns"], detail=True),
    ]
    print_report(
        f"capsule update benchmark: the switch ({mode} run, {sizes.rounds} interleaved rounds,"
        f" {elapsed:.1f} s in all)",
        rest,
        switch_rows,
    )
    failed = len(figures["failures"])
    print(
        f"  calls started per second by the caller: {figures['rate_per_s']:.0f} (asked: {RATE:.0f})"
    )
    print(
        f"  failed calls during the updates: {failed} of {figures['calls']} "
        f"(target 0: {'yes' if failed == 0 else 'NO'})"
    )
    for error in sorted(set(figures["failures"]))[:5]:
        print(f"    {error}")

    thaw = summarize(THAW_ROW, samples[THAW_ROW])
    pauses, cold, reasons = _rollback_pauses(collected.audit)
    rollback_rows = [
        summarize(
            ROLLBACK_ROW,
            samples[ROLLBACK_ROW],
            target=ROLLBACK_TARGET,
            note=f"{cold} of {len(pauses)} rollbacks were cold starts (a thaw is the design)",
        ),
        summarize(ROLLBACK_PAUSE_ROW, pauses or [0.0], detail=True),
        summarize(BY_HAND_ROW, samples[BY_HAND_ROW]),
    ]
    print()
    print_report("automatic rollback", thaw, rollback_rows)

    cold_start = summarize(COLD_ROW, samples[COLD_ROW])
    plugin_rows = [summarize(PLUGIN_ROW, samples[PLUGIN_ROW], target=PLUGIN_TARGET)]
    print()
    print_report("plugin added at run time", cold_start, plugin_rows)

    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "anyio", "msgspec", "cloudpickle"]),
        floor=rest,
        measures=switch_rows,
        settings={
            "quick": args.quick,
            "rate_per_s": RATE,
            "state_bytes": _update_app.STATE_BYTES,
            **asdict(sizes),
        },
        elapsed_s=elapsed,
    )
    results = [{**row, "floor": REST_ROW} for row in payload["results"]]
    for floor, rows in ((thaw, rollback_rows), (cold_start, plugin_rows)):
        part = report_payload(
            NAME, machine={}, floor=floor, measures=rows, settings={}, elapsed_s=0
        )
        results += [{**row, "floor": floor.name} for row in part["results"]]
    payload["floor"] = {
        **payload["floor"],
        "rows": [REST_ROW, THAW_ROW, COLD_ROW],
    }
    payload["floors"] = [
        {"name": m.name, "p50_us": round(m.p50_us, 4), "p99_us": round(m.p99_us, 4)}
        for m in (rest, thaw, cold_start)
    ]
    payload["results"] = results
    payload["failures"] = {
        "calls": figures["calls"],
        "rate_per_s": figures["rate_per_s"],
        "failed": failed,
        "target": 0,
        "met": failed == 0,
        "errors": sorted(set(figures["failures"]))[:20],
    }
    payload["updates"] = collected.switches.reports
    payload["rollbacks"] = {"cold": cold, "reasons": reasons}
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
