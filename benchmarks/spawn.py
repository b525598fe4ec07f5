"""Container cold start and idle memory against the floors of a plain fork and a forked child.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Measures, in one run and on one machine:

* the floor: ``os.fork()`` of this process, the child ``os._exit(0)``, the parent ``waitpid``;
* capsule cold start, request to first call served: on a running supervisor whose one
  inline feature was stopped beforehand (untimed), ``await sup.start(name)`` and one
  ``await sup.call(name, "ping")``, with the two halves also reported apart;
* bubblewrap around a fresh interpreter importing the runtime
  (``bwrap --unshare-all ... python -c "import trio, msgspec, anyio, cloudpickle,
  capsule.feature"``), skipped with a note where ``bwrap`` is not installed;
* the same fresh interpreter without a sandbox;
* memory: with many idle containers up (50; ``--quick`` 10), the PSS of each container's
  processes (the outer one the supervisor knows, the inner one running the feature, and
  the file-system server of its view),
  the zygote's own PSS, and as the floor the PSS of an idle forked child of this process;
  beside it, the memory private to each container's processes (USS), what one more adds.

The timed measures run interleaved, in rounds, so machine noise spreads over all of them;
the memory snapshot is taken afterwards, from a second supervisor. Must run as root or
where ``capsule doctor`` reports full isolation. Run:
``python benchmarks/spawn.py [--json PATH] [--quick]``. The targets checked are the
project's: cold start <= 15 ms p50 and >= 5x faster than bubblewrap + a fresh interpreter;
<= 10 MB PSS per idle container.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

# first: importing _common takes benchmarks/ off sys.path, where this helper is
import _memory  # noqa: F401 - imported for the names below, found through it
import trio

# isort: split
from _apps import SERVICE, ping, ping_app
from _common import (
    Job,
    Measure,
    Target,
    flatten,
    gc_paused,
    machine_info,
    parse_arguments,
    percentile,
    print_report,
    print_table,
    quiet_logs,
    report_payload,
    run_interleaved,
    summarize,
    time_each,
    write_json,
)
from _memory import container_pss, descendants, private_bytes, pss_bytes

from capsule import Supervisor

NAME: Final = "spawn"
FEATURE: Final = "f"
IMPORTS: Final = "import trio, msgspec, anyio, cloudpickle, capsule.feature"
BWRAP_ROW: Final = "bubblewrap --unshare-all + fresh interpreter"

COLD_START_TARGET: Final = Target(15_000.0)
SPEEDUP_TARGET: Final = 5.0  # bubblewrap + fresh interpreter p50 / capsule cold start p50
PSS_TARGET_BYTES: Final = 10_000_000  # 10 MB
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    cold_starts: int
    cold_start_warmup: int  # per round
    interpreters: int  # samples for each fresh-interpreter measure
    interpreter_warmup: int  # per round
    forks: int
    fork_warmup: int  # per round
    containers: int  # idle containers up for the memory snapshot
    settle_s: float  # wait after the last container is ready, before reading PSS


FULL: Final = Sizes(
    rounds=10,
    cold_starts=50,
    cold_start_warmup=1,
    interpreters=50,
    interpreter_warmup=1,
    forks=500,
    fork_warmup=10,
    containers=50,
    settle_s=1.0,
)
QUICK: Final = Sizes(
    rounds=5,
    cold_starts=10,
    cold_start_warmup=1,
    interpreters=10,
    interpreter_warmup=1,
    forks=100,
    fork_warmup=5,
    containers=10,
    settle_s=0.5,
)


# -- the floor -------------------------------------------------------------------------


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def fork_job(sizes: Sizes) -> Job:
    def run(count: int) -> list[int]:
        return time_each(_fork_and_reap, samples=count, warmup=sizes.fork_warmup)

    return Job("os.fork() of this process + child _exit + waitpid", sizes.forks, run)


# -- capsule cold start ---------------------------------------------------------------------


@dataclass
class _Halves:
    """The two parts of each timed cold start, kept beside the job's own samples."""

    start_ns: list[int]
    call_ns: list[int]


async def _cold_starts(sup: Supervisor, count: int, warmup: int, halves: _Halves) -> list[int]:
    """``count`` times: stop (untimed), then time start + the first call served."""
    clock = time.perf_counter_ns
    durations: list[int] = []
    with gc_paused():
        for index in range(warmup + count):
            await sup.stop(FEATURE)
            begin = clock()
            await sup.start(FEATURE)
            started = clock()
            await ping(sup, FEATURE, index)
            served = clock()
            if index >= warmup:
                durations.append(served - begin)
                halves.start_ns.append(started - begin)
                halves.call_ns.append(served - started)
    return durations


def capsule_job(sup: Supervisor, sizes: Sizes, halves: _Halves) -> Job:
    """Runs from the worker thread of :func:`run_timed`, hopping back into trio per slice."""

    def run(count: int) -> list[int]:
        return trio.from_thread.run(_cold_starts, sup, count, sizes.cold_start_warmup, halves)

    return Job(
        "capsule cold start: sup.start() + first sup.call()",
        sizes.cold_starts,
        run,
        target=COLD_START_TARGET,
        note="sup.stop() runs untimed before each sample; one inline feature, one container",
    )


# -- fresh interpreters ------------------------------------------------------------------------


def _bwrap_argv(bwrap: str) -> list[str]:
    return [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",  # noqa: S108 - the sandbox's own empty tmpfs, not a host path
        sys.executable,
        "-c",
        IMPORTS,
    ]


def _run_argv(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    # Fixed argument lists: this interpreter, and bwrap as found on PATH.
    return subprocess.run(argv, capture_output=True, check=False)  # noqa: S603


def _interpreter_job(name: str, argv: Sequence[str], sizes: Sizes) -> Job:
    def call() -> None:
        result = _run_argv(argv)
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{name}: exited {result.returncode}: {stderr}")

    def run(count: int) -> list[int]:
        return time_each(call, samples=count, warmup=sizes.interpreter_warmup)

    return Job(name, sizes.interpreters, run, extra={"argv": list(argv)})


def interpreter_jobs(sizes: Sizes) -> tuple[list[Job], str]:
    """The bwrap and plain fresh-interpreter jobs, and a note when bwrap cannot be measured."""
    plain = _interpreter_job(
        "fresh interpreter importing the runtime", [sys.executable, "-c", IMPORTS], sizes
    )
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return [plain], "bwrap is not installed (Debian: apt-get install bubblewrap): row skipped"
    argv = _bwrap_argv(bwrap)
    probe = _run_argv(argv)
    if probe.returncode != 0:
        stderr = probe.stderr.decode(errors="replace").strip().splitlines()
        reason = stderr[-1] if stderr else f"exit status {probe.returncode}"
        return [plain], f"bwrap cannot run here ({reason}): row skipped"
    return [_interpreter_job(BWRAP_ROW, argv, sizes), plain], ""


# -- the timed run ------------------------------------------------------------------------


async def run_timed(
    root: Path, sizes: Sizes
) -> tuple[list[Job], list[list[list[float]]], _Halves, str]:
    """Open one supervisor and run every timed job interleaved from a worker thread."""
    halves = _Halves([], [])
    app = ping_app(root, "spawnbench", {FEATURE: {}})
    async with app.open() as sup:
        if await sup.call(FEATURE, SERVICE, "ready") != "ready":
            raise RuntimeError("the inline feature does not echo its request")
        others, skipped = interpreter_jobs(sizes)
        jobs = [fork_job(sizes), capsule_job(sup, sizes, halves), *others]
        collected = await trio.to_thread.run_sync(
            lambda: run_interleaved(jobs, rounds=sizes.rounds)
        )
    return jobs, collected, halves, skipped


# -- memory ---------------------------------------------------------------------------------


def idle_child_pss() -> int:
    """The PSS of a forked child of this process that waits, idle, on a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        time.sleep(0.2)
        return pss_bytes(pid)
    finally:
        os.close(write_end)  # the child reads EOF and exits
        os.waitpid(pid, 0)


@dataclass(frozen=True)
class Memory:
    """The memory snapshot, in bytes."""

    containers: int
    per_container: list[int]
    outer: list[int]
    inner: list[int]
    view: list[int]
    processes_per_container: list[int]
    private: dict[str, list[int]]  # outer, inner, view: each process's USS, per container
    zygote: int
    floor: int


async def measure_memory(root: Path, sizes: Sizes) -> Memory:
    names = [f"f{index:03d}" for index in range(sizes.containers)]
    app = ping_app(root, "spawnbench", {name: {} for name in names})
    async with app.open() as sup:
        for name in names:
            if await sup.call(name, SERVICE, name) != name:
                raise RuntimeError(f"{name} does not echo its request")
        await trio.sleep(sizes.settle_s)
        per_container: list[int] = []
        outer: list[int] = []
        inner: list[int] = []
        view: list[int] = []
        processes: list[int] = []
        private: dict[str, list[int]] = {"outer": [], "inner": [], "view": []}
        for name in names:
            instance = sup.feature(name).instance
            if instance is None:
                raise RuntimeError(f"{name} has no running container")
            view_pid = None if instance.view is None else instance.view.pid
            parts = container_pss(instance.pid, view_pid)
            per_container.append(sum(parts[:3]))
            outer.append(parts[0])
            inner.append(parts[1])
            view.append(parts[2])
            processes.append(parts[3])
            private["outer"].append(private_bytes(instance.pid))
            below = descendants(instance.pid)[1:]
            private["inner"].append(sum(private_bytes(pid) for pid in below))
            private["view"].append(0 if view_pid is None else private_bytes(view_pid))
        zygote = sup._machinery.zygote
        if zygote is None:
            raise RuntimeError("the supervisor has no zygote")
        zygote_pss = pss_bytes(zygote.pid)
        floor = idle_child_pss()
    return Memory(
        containers=len(names),
        per_container=per_container,
        outer=outer,
        inner=inner,
        view=view,
        processes_per_container=processes,
        private=private,
        zygote=zygote_pss,
        floor=floor,
    )


def _mean(values: Sequence[int]) -> float:
    return math.fsum(values) / len(values)


def _mib(value: float) -> str:
    return f"{value / MIB:.2f}"


def print_memory(memory: Memory) -> dict[str, Any]:
    """Print the memory table (PSS in MiB, ratio to the idle forked child); return its JSON."""
    floor = memory.floor
    mean = _mean(memory.per_container)
    met = mean <= PSS_TARGET_BYTES
    target = f"mean <= 10 MB ({PSS_TARGET_BYTES / MIB:.2f} MiB)"
    rows: list[tuple[str, ...]] = [
        ("FLOOR: idle forked child of this process", _mib(floor), "-", "1.00x", "-", "-"),
        (
            f"per idle container (outer + inner + view server), {memory.containers} up",
            _mib(mean),
            _mib(max(memory.per_container)),
            f"{mean / floor:.2f}x",
            target,
            "yes" if met else "NO",
        ),
        *(
            (
                f"  {part}",
                _mib(_mean(values)),
                _mib(max(values)),
                f"{_mean(values) / floor:.2f}x",
                "-",
                "-",
            )
            for part, values in (
                ("outer process (the pid the supervisor knows)", memory.outer),
                ("inner process (runs the feature)", memory.inner),
                ("its file-system view server", memory.view),
            )
        ),
        ("zygote (shared by every container)", _mib(memory.zygote), "-", "-", "-", "-"),
    ]
    header = ("measure", "PSS MiB", "max MiB", "mean/floor", "target", "met")
    print()
    print_table(
        f"memory of idle containers (PSS from /proc/<pid>/smaps_rollup, {memory.containers} up)",
        header,
        rows,
    )
    print(
        f"  {memory.containers} containers + zygote: "
        f"{_mib(sum(memory.per_container) + memory.zygote)} MiB in all"
    )
    private = {part: _mean(values) for part, values in memory.private.items()}
    print(
        f"  private to each container (USS, what one more adds; PSS adds a share of the"
        f" zygote's pages): {_mib(sum(private.values()))} MiB = outer {_mib(private['outer'])}"
        f" + inner {_mib(private['inner'])} + view server {_mib(private['view'])}"
    )
    return {
        "containers": memory.containers,
        "floor_pss_bytes": floor,
        "per_container_pss_bytes": {
            "mean": round(mean),
            "p50": round(percentile(memory.per_container, 50)),
            "max": max(memory.per_container),
            "min": min(memory.per_container),
        },
        "outer_pss_bytes_mean": round(_mean(memory.outer)),
        "inner_pss_bytes_mean": round(_mean(memory.inner)),
        "view_server_pss_bytes_mean": round(_mean(memory.view)),
        "processes_per_container": sorted(set(memory.processes_per_container)),
        "zygote_pss_bytes": memory.zygote,
        "private_bytes_mean": {
            "per_container": round(sum(private.values())),
            **{part: round(value) for part, value in private.items()},
        },
        "ratio_to_floor_mean": round(mean / floor, 5),
        "target": target,
        "target_bytes": PSS_TARGET_BYTES,
        "met": met,
    }


# -- the run ---------------------------------------------------------------------------------


def _row(measures: Sequence[Measure], name: str) -> Measure | None:
    return next((m for m in measures if m.name == name), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(
        NAME, "Container cold start and idle memory against fork and bubblewrap.", argv
    )
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="capsule-bench-spawn-") as scratch:
        jobs, collected, halves, skipped = trio.run(run_timed, Path(scratch) / "timed", sizes)
        memory = trio.run(measure_memory, Path(scratch) / "memory", sizes)
    elapsed = time.perf_counter() - started

    (floor_spec, floor_samples), *measured = zip(jobs, collected, strict=True)
    floor_rounds_us = [percentile(chunk, 50) / 1000 for chunk in floor_samples]
    floor_extra = {**floor_spec.extra, "round_p50_us": [round(v, 3) for v in floor_rounds_us]}
    floor = replace(floor_spec, extra=floor_extra).summarize(flatten(floor_samples))
    measures: list[Measure] = []
    cold_rounds_ms: list[float] = []
    for job, samples in measured:
        if job.target is not COLD_START_TARGET:
            measures.append(job.summarize(flatten(samples)))
        else:
            cold_rounds_ms = [percentile(chunk, 50) / 1e6 for chunk in samples]
            rounds_extra = {"round_p50_us": [round(v * 1000, 1) for v in cold_rounds_ms]}
            measures.append(replace(job, extra=rounds_extra).summarize(flatten(samples)))
            measures.append(summarize("sup.start() alone", halves.start_ns, detail=True))
            measures.append(summarize("first sup.call() alone", halves.call_ns, detail=True))

    print_report(
        f"capsule spawn benchmark ({'quick' if args.quick else 'full'} run,"
        f" {sizes.rounds} interleaved rounds, {elapsed:.1f} s)",
        floor,
        measures,
    )
    print(
        f"  floor p50 per round: {min(floor_rounds_us):.1f} to {max(floor_rounds_us):.1f} us"
        " (the spread shows how steady the machine was)"
    )
    cold = _row(measures, jobs[1].name)
    bwrap = _row(measures, BWRAP_ROW)
    if cold is None:
        raise RuntimeError("no cold start figures")
    ratios: dict[str, Any] = {"capsule_over_fork_p50": round(cold.ratio_to(floor), 3)}
    print(
        f"  capsule cold start p50 per round: {min(cold_rounds_ms):.1f} to"
        f" {max(cold_rounds_ms):.1f} ms; p50 / fork p50: {cold.ratio_to(floor):.1f}x"
    )
    if bwrap is None:
        print(f"  {BWRAP_ROW}: {skipped}")
        ratios.update(bwrap_over_capsule_p50=None, speedup_target=SPEEDUP_TARGET, met=None)
    else:
        speedup = bwrap.p50_us / cold.p50_us
        met = speedup >= SPEEDUP_TARGET
        print(
            f"  speed-up, bubblewrap + fresh interpreter p50 / capsule cold start p50: "
            f"{speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x: {'yes' if met else 'NO'})"
        )
        ratios.update(
            bwrap_over_capsule_p50=round(speedup, 3), speedup_target=SPEEDUP_TARGET, met=met
        )
    memory_json = print_memory(memory)

    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "anyio", "msgspec", "cloudpickle"]),
        floor=floor,
        measures=measures,
        settings={"quick": args.quick, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    payload["ratios"] = ratios
    payload["memory"] = memory_json
    if skipped:
        payload["skipped"] = {BWRAP_ROW: skipped}
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
