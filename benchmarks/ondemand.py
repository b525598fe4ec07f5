"""On-demand features: the first call to a stopped one against an eager cold start, and what
an app of many on-demand features costs the supervisor.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Measures, in one run and on one machine:

* the floor: an eager feature's cold start, ``await sup.start(name)`` and its first
  ``await sup.call(name, "ping")``, after an untimed ``sup.stop(name)``;
* ``first call to a stopped on-demand feature``: ``await sup.call(lazy, "ping")`` on a
  feature with ``start = "on-demand"`` that an untimed ``sup.stop`` put back to
  ``stopped (on-demand)``: the broker holds the call while the container starts and
  delivers it once it is ready (target: p50 <= 1.2x the floor);
* supervisor memory: the Python heap the supervisor holds (tracemalloc, after a
  collection) for an app of 100 on-demand features (``--quick``: 20) of which 5 are woken,
  for the same app all eager, and for an app of 5 eager features (target: the on-demand app
  within 1.5x of the 5 eager features).

The timed rows run interleaved, in rounds. Must run as root or where ``capsule doctor``
reports full isolation. Run: ``python benchmarks/ondemand.py [--json PATH] [--quick]``.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio
from _apps import SERVICE, ping, ping_app
from _common import (
    LabelledTarget,
    Measure,
    machine_info,
    parse_arguments,
    percentile,
    print_report,
    print_table,
    quiet_logs,
    report_payload,
    summarize,
    write_json,
)

from capsule import Supervisor

NAME: Final = "ondemand"
EAGER: Final = "eager"
LAZY: Final = "lazy"
FIRST_CALL_ROW: Final = "first call to a stopped on-demand feature"
RATIO_TARGET: Final = 1.2
MEMORY_RATIO_TARGET: Final = 1.5
WOKEN: Final = 5
KiB: Final = 1024


@dataclass(frozen=True)
class Sizes:
    samples: int  # cold starts of each kind, split over the rounds
    rounds: int
    warmup: int
    features: int  # of the memory app


FULL: Final = Sizes(samples=60, rounds=4, warmup=2, features=100)
QUICK: Final = Sizes(samples=6, rounds=2, warmup=1, features=20)


# -- timed: eager cold start against the first call to a stopped on-demand feature ------------


async def _eager_once(sup: Supervisor, index: int) -> int:
    await sup.stop(EAGER)
    begin = time.perf_counter_ns()
    await sup.start(EAGER)
    await ping(sup, EAGER, index)
    return time.perf_counter_ns() - begin


async def _lazy_once(sup: Supervisor, index: int) -> int:
    await sup.stop(LAZY)  # back to "stopped (on-demand)"
    if sup.feature(LAZY).statistics().state != "stopped (on-demand)":
        raise RuntimeError(f"{LAZY} is not stopped (on-demand) before the sample")
    begin = time.perf_counter_ns()
    await ping(sup, LAZY, index)
    return time.perf_counter_ns() - begin


async def run_timed(root: Path, sizes: Sizes) -> tuple[list[int], list[int]]:
    app = ping_app(
        root, "ondemandbench", {EAGER: {}, LAZY: {"start": "on-demand", "idle_stop": "never"}}
    )
    eager: list[int] = []
    lazy: list[int] = []
    async with app.open() as sup:
        for index in range(sizes.warmup):
            await _eager_once(sup, index)
            await _lazy_once(sup, index)
        for round_index in range(sizes.rounds):
            share = sizes.samples // sizes.rounds + (round_index < sizes.samples % sizes.rounds)
            for index in range(share):
                gc.collect()
                eager.append(await _eager_once(sup, index))
                gc.collect()
                lazy.append(await _lazy_once(sup, index))
    return eager, lazy


# -- memory: the supervisor's heap for many on-demand features ---------------------------------


async def _heap(root: Path, policies: dict[str, dict[str, Any]], woken: int) -> int:
    """Bytes of Python heap allocated while the app is open, ``woken`` of its on-demand
    features called once (tracemalloc, after a collection; the supervisor's side only)."""
    app = ping_app(root, "ondemandmem", policies)
    app.write()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with app.open() as sup:
            for name in list(policies)[:woken]:
                await sup.call(name, SERVICE, 0)
            await trio.sleep(0.2)  # the wake's follow-ups (audit lines, statistics) settle
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held


@dataclass(frozen=True)
class Memory:
    on_demand: int  # bytes: sizes.features on-demand features, WOKEN woken
    all_eager: int  # the same app, every feature eager
    five_eager: int  # an app of WOKEN eager features


async def measure_memory(root: Path, sizes: Sizes) -> Memory:
    names = [f"f{index:03d}" for index in range(sizes.features)]
    lazy = {"start": "on-demand", "idle_stop": "never"}
    await _heap(root / "warm", {name: {} for name in names[:WOKEN]}, 0)  # imports, caches
    on_demand = await _heap(root / "lazy", dict.fromkeys(names, lazy), WOKEN)
    all_eager = await _heap(root / "eager", {name: {} for name in names}, 0)
    five = await _heap(root / "five", {name: {} for name in names[:WOKEN]}, 0)
    return Memory(on_demand=on_demand, all_eager=all_eager, five_eager=five)


def print_memory(memory: Memory, sizes: Sizes) -> dict[str, Any]:
    ratio = memory.on_demand / memory.five_eager
    met = ratio <= MEMORY_RATIO_TARGET
    target = f"<= {MEMORY_RATIO_TARGET:g}x the {WOKEN} eager"
    rows = [
        (
            f"FLOOR: an app of {WOKEN} eager features",
            f"{memory.five_eager / KiB:.0f}",
            "1.00x",
            "-",
            "-",
        ),
        (
            f"{sizes.features} on-demand features, {WOKEN} woken",
            f"{memory.on_demand / KiB:.0f}",
            f"{ratio:.2f}x",
            target,
            "yes" if met else "NO",
        ),
        (
            f"the same {sizes.features} features, all eager",
            f"{memory.all_eager / KiB:.0f}",
            f"{memory.all_eager / memory.five_eager:.2f}x",
            "-",
            "-",
        ),
    ]
    print()
    print_table(
        "supervisor memory (Python heap while the app is open, tracemalloc)",
        ("measure", "KiB", "ratio", "target", "met"),
        rows,
        right=(1, 2),
    )
    return {
        "features": sizes.features,
        "woken": WOKEN,
        "on_demand_bytes": memory.on_demand,
        "all_eager_bytes": memory.all_eager,
        "five_eager_bytes": memory.five_eager,
        "ratio_to_five_eager": round(ratio, 4),
        "all_eager_ratio_to_five_eager": round(memory.all_eager / memory.five_eager, 4),
        "target": target,
        "met": met,
    }


# -- the run ---------------------------------------------------------------------------------


def _first_call_target(floor: Measure) -> LabelledTarget:
    return LabelledTarget(
        floor.p50_us * RATIO_TARGET, label=f"<= {RATIO_TARGET:g}x the floor", source="issue"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(
        NAME, "The first call to a stopped on-demand feature, and the memory they save.", argv
    )
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capsule-bench-ondemand-") as scratch:
        eager, lazy = trio.run(run_timed, Path(scratch) / "timed", sizes)
        memory = trio.run(measure_memory, Path(scratch) / "memory", sizes)
    elapsed = time.perf_counter() - started

    floor = summarize("eager cold start: sup.start() + first sup.call()", eager)
    first = summarize(
        FIRST_CALL_ROW,
        lazy,
        target=_first_call_target(floor),
        note="held by the broker while its container starts, delivered once it is ready",
    )
    print_report(
        f"capsule on-demand benchmark ({'quick' if args.quick else 'full'} run, "
        f"{sizes.rounds} interleaved rounds, {elapsed:.1f} s)",
        floor,
        [first],
    )
    print(
        f"  eager p50 {percentile(eager, 50) / 1e6:.1f} ms, on-demand first call p50 "
        f"{percentile(lazy, 50) / 1e6:.1f} ms"
    )
    memory_json = print_memory(memory, sizes)
    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "anyio", "msgspec", "cloudpickle"]),
        floor=floor,
        measures=[first],
        settings={"quick": args.quick, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    payload["memory"] = memory_json
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
