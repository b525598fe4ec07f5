"""Live updates: what callers see while a feature's version is switched, and how fast a
failing new version is rolled back.

Must not gate: targets are reported, met or not; only a real error (a call that failed
during an update, a rollback that did not happen) exits non-zero.

Measures, in one run and on one machine:

* the floor: a host ``sup.call`` to a running feature, no update under way;
* an update under load: the host calls ``store.get`` about 1,000 times a second while the
  feature is updated (and updated back, in turns) with ``state`` bytes of state moved
  (10 MiB; 1 MiB with ``--quick``); per update, the p99 latency of the calls made while it
  ran, target <= 50 ms (PERFORMANCE.md: "pause callers see p99 <= 50 ms with 10 MiB of
  state"), and the time calls were held (``UpdateReport.pause``). No call may fail;
* an automatic rollback: a new version whose ``get`` ends its container, with the default
  two crashes; from the answer of the second crashed call to the answer of the next call,
  which the thawed old version serves: target <= 100 ms;
* a rollback by hand (``sup.rollback``): the time calls were held (thaw and switch).

Must run where containers can start (as root here). Run:
``python benchmarks/updates.py [--json PATH] [--quick]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio
from _common import (
    LabelledTarget,
    Measure,
    machine_info,
    parse_arguments,
    percentile,
    print_report,
    quiet_logs,
    report_payload,
    summarize,
    write_json,
)

from capsule import FeatureCrashedError, Supervisor
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp

NAME: Final = "updates"
PAUSE_TARGET: Final = LabelledTarget(50_000.0, label="per-update p99 <= 50 ms")
ROLLBACK_TARGET: Final = LabelledTarget(100_000.0, label="p50 <= 100 ms")
CALL_EVERY: Final = 0.001  # about 1,000 calls a second


@dataclass(frozen=True)
class Sizes:
    updates: int
    rollbacks: int
    by_hand: int
    floor_calls: int
    state: int


FULL: Final = Sizes(updates=20, rollbacks=10, by_hand=10, floor_calls=2000, state=10 << 20)
QUICK: Final = Sizes(updates=2, rollbacks=2, by_hand=2, floor_calls=200, state=1 << 20)


def _store(feature: Feature, size: int) -> None:
    """``get`` answers the size of the state; the state moves with the version."""
    state = {"data": b""}

    @feature.on_start
    async def _fill(ctx: Context) -> None:
        if not state["data"]:
            state["data"] = os.urandom(size)

    @feature.service("get")
    async def _get(ctx: Context, request: Any) -> int:
        return len(state["data"])

    @feature.export_state
    async def _export(ctx: Context) -> bytes:
        return state["data"]

    @feature.import_state
    async def _import(ctx: Context, from_version: str, data: bytes) -> None:
        state["data"] = data


def _crashing(feature: Feature) -> None:
    @feature.service("get")
    async def _get(ctx: Context, request: Any) -> int:
        os._exit(3)


def _ok(feature: Feature) -> None:
    @feature.service("get")
    async def _get(ctx: Context, request: Any) -> int:
        return 1


FAST_RESTART: Final = {"policy": "always", "max_restarts": 100, "backoff": "1ms..2ms"}


def _app(root: Path, sizes: Sizes) -> tuple[TestApp, dict[str, Path]]:
    app = TestApp(root, name="updatebench")
    settle = {"probation": "0s", "keep": "0s", "state_max": "64MiB"}
    _store(app.feature("store", faults=False, policy={"update": settle}), sizes.state)
    watched = {"probation": "60s", "keep": "0s"}  # rolled back well within its probation
    _ok(app.feature("crashy", faults=False, restart=FAST_RESTART, policy={"update": watched}))
    kept = {"probation": "60s", "keep": "60s"}
    _ok(app.feature("kept", faults=False, policy={"update": kept}))
    store2 = app.version("store", "2.0.0", faults=False)
    _store(store2, sizes.state)
    crashy2 = app.version("crashy", "2.0.0", faults=False)
    _crashing(crashy2)
    kept2 = app.version("kept", "2.0.0", faults=False)
    _ok(kept2)
    bundles = {
        "store": root / "features" / "store",
        "store2": app.bundle(store2),
        "crashy2": app.bundle(crashy2),
        "kept2": app.bundle(kept2),
    }
    return app, bundles


async def _floor(sup: Supervisor, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await sup.call("store", "get")
        samples.append(time.perf_counter_ns() - start)
    return samples


async def _update_under_load(sup: Supervisor, bundle: Path) -> tuple[float, float, int]:
    """One update under about 1,000 calls/s: the p99 call latency (ns) while it ran, the
    time calls were held (ns), and how many calls it spanned."""
    latencies: list[float] = []
    failures: list[str] = []
    done = trio.Event()

    async def load() -> None:
        while not done.is_set():
            start = time.perf_counter_ns()
            try:
                await sup.call("store", "get")
            except Exception as exc:  # every failure is reported, then raised below
                failures.append(repr(exc))
            latencies.append(time.perf_counter_ns() - start)
            await trio.sleep(CALL_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        await trio.sleep(0.05)
        first = len(latencies)
        report = await sup.update("store", bundle)
        last = len(latencies) + 1  # the call in flight as it returned
        await trio.sleep(0.05)
        done.set()
    if failures:
        raise RuntimeError(f"{len(failures)} call(s) failed during an update: {failures[:3]}")
    during = latencies[first:last]
    await sup._updates.wait_settled("store")  # the next update may start
    return percentile(during, 99), report.pause * 1e9, len(during)


async def _automatic_rollback(sup: Supervisor, bundle: Path) -> float:
    """From the answer of the second crashed call to the answer of the next one (ns)."""
    await sup.update("crashy", bundle)
    crashes = 0
    while crashes < 2:
        try:
            await sup.call("crashy", "get")
        except FeatureCrashedError:
            crashes += 1
    crashed_at = time.perf_counter_ns()
    if await sup.call("crashy", "get") != 1:
        raise RuntimeError("the old version did not answer after the rollback")
    took = time.perf_counter_ns() - crashed_at
    await sup._updates.wait_settled("crashy")  # the next update may start
    if sup.feature("crashy").manifest.version != "1.0.0":
        raise RuntimeError("the crashing version was not rolled back")
    return took


async def _by_hand(sup: Supervisor, bundle: Path) -> float:
    await sup.update("kept", bundle)
    await trio.sleep(0.1)  # the old version is frozen by now
    report = await sup.rollback("kept")
    if report.cold:
        raise RuntimeError("a rollback during probation started the old version cold")
    return report.pause * 1e9


async def run(root: Path, sizes: Sizes) -> dict[str, list[float]]:
    app, bundles = _app(root, sizes)
    found: dict[str, list[float]] = {
        "floor": [],
        "p99": [],
        "pause": [],
        "spanned": [],
        "rollback": [],
        "by_hand": [],
    }
    async with app.open() as sup:
        found["floor"] = await _floor(sup, sizes.floor_calls)
        for index in range(sizes.updates):
            bundle = bundles["store2"] if index % 2 == 0 else bundles["store"]
            p99, pause, spanned = await _update_under_load(sup, bundle)
            found["p99"].append(p99)
            found["pause"].append(pause)
            found["spanned"].append(spanned)
        for _ in range(sizes.rollbacks):
            found["rollback"].append(await _automatic_rollback(sup, bundles["crashy2"]))
        for _ in range(sizes.by_hand):
            found["by_hand"].append(await _by_hand(sup, bundles["kept2"]))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, "Live updates: the pause callers see, and rollbacks.", argv)
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capsule-bench-updates-") as scratch:
        found = trio.run(run, Path(scratch), sizes)
    elapsed = time.perf_counter() - started
    floor = summarize("host call to a running feature", found["floor"])
    measures: list[Measure] = [
        summarize(
            f"update under ~1,000 calls/s, {sizes.state >> 20} MiB of state: call p99",
            found["p99"],
            target=PAUSE_TARGET,
            note=f"one sample per update; {sum(found['spanned']):.0f} calls spanned, 0 failed",
        ),
        summarize("calls held during the switch", found["pause"], detail=True),
        summarize(
            "automatic rollback: 2nd crash to the old version serving",
            found["rollback"],
            target=ROLLBACK_TARGET,
        ),
        summarize("rollback by hand: calls held (thaw and switch)", found["by_hand"]),
    ]
    print_report(
        f"capsule live update benchmark ({'quick' if args.quick else 'full'} run, {elapsed:.1f} s)",
        floor,
        measures,
    )
    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "anyio", "msgspec"]),
        floor=floor,
        measures=measures,
        settings={"quick": args.quick, **asdict(sizes), "call_every_s": CALL_EVERY},
        elapsed_s=elapsed,
    )
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
