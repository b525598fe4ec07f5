"""One feature's file access while another feature hammers or stalls its own view.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Two features of one app run in real containers, each with its own fusefs view (so each
with its own file-system server):

* ``victim`` has a read-only view of a volume of small files; its ``timed`` service opens,
  reads (4 KiB) and closes one of them at a time and times each round inside its
  container (``time.perf_counter_ns``), so the figure is the file access alone;
* ``neighbour`` has a read-write view of a volume of 5,000 files (``--quick``: 1,000)
  and a cpu limit of half a core; its ``hammer`` service lists that directory, stats every
  entry and re-reads a file, flat out, until told to stop.

Three conditions, interleaved over rounds so machine noise spreads over all of them:

* **quiet** (the floor): the neighbour idles;
* **hammered**: the neighbour hammers its view (started 100 ms before the victim's first
  sample, stopped after its last);
* **stalled**: the neighbour's file-system server is stopped with SIGSTOP (a hung server),
  and the neighbour is blocked on it, while the victim reads; then SIGCONT. The stall is
  kept shorter than the supervisor's probe timeout (raised to 60 s for this run), which
  would otherwise abort and restart the hung server.

The target (PERFORMANCE.md: one feature flooding or stalling) is that the victim's p99
stays within 2x its quiet p99. Run: ``python benchmarks/views.py [--json PATH] [--quick]``
(as root: containers need it here).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
import trio.lowlevel
from _common import (
    Measure,
    machine_info,
    parse_arguments,
    print_report,
    quiet_logs,
    report_payload,
    summarize,
    write_json,
)

from capsule import Supervisor, ViewTimeouts
from capsule.feature import Context
from capsule.testing import TestApp, leftovers

NAME: Final = "views"
FAIRNESS_TARGET: Final = 2.0  # victim p99 with the neighbour busy / victim p99 quiet
SMALL_FILES: Final = 100
QUIET: Final = "victim open+read 4 KiB+close, neighbour idle"
HAMMERED: Final = "while the neighbour hammers its view (listdir + stat all + read)"
STALLED: Final = "while the neighbour's view server is stopped (SIGSTOP)"


@dataclass(frozen=True)
class Sizes:
    rounds: int
    samples: int  # per condition per round
    neighbour_files: int
    ramp_s: float


FULL: Final = Sizes(rounds=6, samples=500, neighbour_files=5000, ramp_s=0.1)
QUICK: Final = Sizes(rounds=3, samples=150, neighbour_files=1000, ramp_s=0.1)


# -- inside the containers ------------------------------------------------------------------


async def timed(ctx: Context, request: Any) -> list[int]:
    """Durations (ns) of ``request`` rounds of open + read 4 KiB + close."""
    clock = time.perf_counter_ns
    durations = []
    for index in range(int(request)):
        path = f"/files/f{index % 100:03d}"
        start = clock()
        with open(path, "rb") as f:  # noqa: ASYNC230 - the blocking file access is the measure
            f.read()
        durations.append(clock() - start)
    return durations


_stop: dict[str, bool] = {"stop": False}


async def hammer(ctx: Context, request: Any) -> int:
    """List, stat and read the own view flat out until ``stop``; returns the rounds done."""
    _stop["stop"] = False
    rounds = 0
    while not _stop["stop"]:
        for name in os.listdir("/many"):
            os.stat(f"/many/{name}")
        with open("/many/f00000", "rb") as f:  # noqa: ASYNC230 - the hammering is blocking I/O
            f.read()
        rounds += 1
        if rounds % 4 == 0:
            await trio.lowlevel.checkpoint()  # let the stop call in
    return rounds


async def stop(ctx: Context, request: Any) -> None:
    _stop["stop"] = True


async def touch(ctx: Context, request: Any) -> int:
    """One stat of the own view (blocks while the view's server is stopped)."""
    return os.stat("/many").st_nlink


# -- the host side -------------------------------------------------------------------------


def build_app(root: Path, sizes: Sizes) -> TestApp:
    app = TestApp(root, name="views")
    app.volume("files", {f"f{index:03d}": "x" * 4096 for index in range(SMALL_FILES)})
    many = app.volume("many")
    for index in range(sizes.neighbour_files):
        (many / f"f{index:05d}").write_bytes(b"y" * 512)
    victim = app.feature("victim", policy={"fs": [{"path": "/files", "volume": "files"}]})
    victim.service("timed")(timed)
    neighbour = app.feature(
        "neighbour",
        limits={"cpu": 0.5},
        policy={"fs": [{"path": "/many", "volume": "many", "mode": "rw"}]},
    )
    for handler in (hammer, stop, touch):
        neighbour.service(handler.__name__)(handler)
    return app


async def quiet(sup: Supervisor, sizes: Sizes) -> list[int]:
    durations: list[int] = await sup.call("victim", "timed", sizes.samples, timeout=120)
    return durations


async def hammered(sup: Supervisor, sizes: Sizes, rounds_done: list[int]) -> list[int]:
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            rounds_done.append(int(await sup.call("neighbour", "hammer", timeout=300)))

        nursery.start_soon(run)
        await trio.sleep(sizes.ramp_s)
        durations: list[int] = await sup.call("victim", "timed", sizes.samples, timeout=120)
        await sup.call("neighbour", "stop")
    return durations


async def stalled(sup: Supervisor, sizes: Sizes) -> list[int]:
    instance = sup.feature("neighbour").instance
    if instance is None or instance.view is None:
        raise RuntimeError("the neighbour has no running view")
    server = instance.view.pid
    os.kill(server, signal.SIGSTOP)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: sup.call("neighbour", "touch", timeout=120))
            await trio.sleep(sizes.ramp_s)  # the neighbour is now blocked on its view
            durations: list[int] = await sup.call("victim", "timed", sizes.samples, timeout=120)
            os.kill(server, signal.SIGCONT)
    finally:
        os.kill(server, signal.SIGCONT)
    return durations


async def measure(root: Path, sizes: Sizes) -> tuple[dict[str, list[int]], list[int]]:
    app = build_app(root, sizes)
    samples: dict[str, list[int]] = {QUIET: [], HAMMERED: [], STALLED: []}
    rounds_done: list[int] = []
    timeouts = ViewTimeouts(probe_interval=2.0, probe=60.0)
    async with app.open(view_timeouts=timeouts) as sup:
        with trio.fail_after(600):
            await quiet(sup, sizes)  # warm-up: caches, first lookups
            for _ in range(sizes.rounds):
                samples[QUIET] += await quiet(sup, sizes)
                samples[HAMMERED] += await hammered(sup, sizes, rounds_done)
                samples[STALLED] += await stalled(sup, sizes)
    left = leftovers()
    if left:
        raise RuntimeError(f"left behind: {left}")
    return samples, rounds_done


def fairness_rows(floor: Measure, measures: Sequence[Measure]) -> list[dict[str, Any]]:
    rows = []
    for measure in measures:
        ratio = measure.p99_us / floor.p99_us
        rows.append(
            {
                "measure": measure.name,
                "p99_us": round(measure.p99_us, 2),
                "quiet_p99_us": round(floor.p99_us, 2),
                "ratio": round(ratio, 3),
                "target": f"p99 <= {FAIRNESS_TARGET:g}x quiet p99",
                "met": ratio <= FAIRNESS_TARGET,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, __doc__.splitlines()[0] if __doc__ else NAME, argv)
    quiet_logs()
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capsule-bench-views-") as scratch:
        samples, rounds_done = trio.run(measure, Path(scratch), sizes)
    floor = summarize(QUIET, samples[QUIET])
    measures = [
        summarize(
            HAMMERED,
            samples[HAMMERED],
            note=f"the neighbour did {sum(rounds_done)} rounds of listdir + stat of "
            f"{sizes.neighbour_files} entries + read",
            detail=True,
        ),
        summarize(STALLED, samples[STALLED], detail=True),
    ]
    mode = "quick run" if args.quick else "full run"
    print_report(
        f"capsule views benchmark ({mode}, {sizes.rounds} interleaved rounds, "
        f"{time.monotonic() - started:.1f} s)",
        floor,
        measures,
    )
    rows = fairness_rows(floor, measures)
    print()
    print("one feature hammering or stalling its view (PERFORMANCE.md)")
    for row in rows:
        verdict = "yes" if row["met"] else "NO"
        print(
            f"  {row['measure']}: p99 {row['p99_us']:.0f} us / quiet p99 "
            f"{row['quiet_p99_us']:.0f} us = {row['ratio']:.2f}x  ({row['target']}: {verdict})"
        )
    payload = report_payload(
        NAME,
        machine=machine_info(["pyfuse3", "trio"]),
        floor=floor,
        measures=measures,
        settings={**sizes.__dict__, "quick": args.quick},
        elapsed_s=time.monotonic() - started,
    )
    payload["fairness"] = rows
    print(f"results written to {write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
