"""The peers benchmark's run: capsule, a multiprocessing worker and (when installed) a Ray
actor, measured interleaved in one run beside the broker benchmark's socket floor.

Runs and reports; must not gate: only a real error exits non-zero.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

# first: importing _common takes benchmarks/ off sys.path, where these helpers are
import _brokerbench  # noqa: F401 - imported for its modules below, found through it
import _memory  # noqa: F401 - imported for the names capsuleside and mpside take from it
import trio

# isort: split
import _apps  # noqa: F401 - the last helper found on sys.path: it imports _common

# isort: split
from _apps import add_ping_features
from _brokerbench.app import build_app
from _brokerbench.floor import PAYLOAD, EchoChild, PingPong, floor_job
from _common import (
    Job,
    Measure,
    flatten,
    machine_info,
    parse_arguments,
    percentile,
    print_report,
    quiet_logs,
    report_payload,
    run_interleaved,
    write_json,
)

from _peers.capsuleside import (
    CapsuleMemory,
    call_idle,
    capsule_jobs,
    capsule_memory,
    idle_names,
)
from _peers.mpside import MpPeers
from _peers.report import comparison, memory_table, print_comparison
from _peers.rows import MEASURES, SYSTEMS
from _peers.sizes import FULL, QUICK, Sizes

if TYPE_CHECKING:
    from _peers.rayside import RayPeers

__all__ = ["main"]

NAME: Final = "peers"
QUICK_SKIP: Final = "--quick never starts Ray (a cluster takes seconds to start): rows skipped"
ABSENT_SKIP: Final = "ray is not installed (pip install 'capsule-rt[peers]'): rows skipped"


def ray_skip_reason(*, quick: bool) -> str:
    """Why the Ray rows are skipped in this run, or "" when Ray is to be measured."""
    if quick:
        return QUICK_SKIP
    if importlib.util.find_spec("ray") is None:
        return ABSENT_SKIP
    return ""


def start_ray() -> RayPeers:
    from _peers.rayside import RayPeers  # noqa: PLC0415 - ray is imported only when it runs

    return RayPeers()


async def run_timed(
    root: Path, sizes: Sizes, child: EchoChild, peers: list[Any]
) -> tuple[list[Job], list[list[list[float]]], CapsuleMemory]:
    """Open capsule's supervisor and run every job interleaved from a worker thread: the
    floor first, then each measure for each system in turn; then the PSS of its idle
    containers, features of the same app called once before the timed run."""
    pong = PingPong(child.sock)
    with trio.fail_after(30):
        await pong.exchange()  # the child is up and echoing
    app, _ = build_app(root)
    add_ping_features(app, {name: {} for name in idle_names(sizes)})
    async with app.open() as sup:
        if await sup.call("echo", "echo", PAYLOAD) != PAYLOAD:
            raise RuntimeError("echo.echo does not return its request")
        await call_idle(sup, sizes)
        by_system = {"capsule": capsule_jobs(sup, sizes)}
        by_system.update((system, peer.jobs(sizes)) for system, peer in peers)
        jobs = [floor_job(pong, sizes.floor_round_trips, sizes.floor_warmup)]
        jobs += [
            by_system[system][measure.key]
            for measure in MEASURES
            for system in SYSTEMS
            if system in by_system
        ]
        samples = await trio.to_thread.run_sync(lambda: run_interleaved(jobs, rounds=sizes.rounds))
        memory = await capsule_memory(sup, sizes)
    return jobs, samples, memory


def _mib(value: float) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


@dataclass
class Collected:
    """Everything one run measured, before it is summarized."""

    jobs: list[Job]
    samples: list[list[list[float]]]
    memory: dict[str, tuple[Sequence[int], str, int]]
    capsule_parts: dict[str, int]  # the mean PSS of each part of a container
    ray_daemons: list[str] | None = None  # the names of Ray's other processes, when it ran
    left_behind: list[str] = field(default_factory=list)  # outlived ray.shutdown()


def measure(sizes: Sizes, *, with_ray: bool) -> Collected:
    """Start every system, run the timed jobs and the memory snapshots, stop them all."""
    child = EchoChild()
    mp: MpPeers | None = None
    ray_peers: RayPeers | None = None
    left_behind: list[str] = []
    try:
        mp = MpPeers()
        peers: list[Any] = [("multiprocessing", mp)]
        if with_ray:
            ray_peers = start_ray()
            peers.append(("ray", ray_peers))
        with tempfile.TemporaryDirectory(prefix="capsule-bench-peers-") as scratch:
            timed = trio.run(run_timed, Path(scratch) / "app", sizes, child, peers)
        jobs, samples, capsule_mem = timed
        mp_mem = mp.memory(sizes)
        ray_mem = None if ray_peers is None else ray_peers.memory(sizes)
    finally:
        child.close()
        if ray_peers is not None:
            left_behind = ray_peers.close()
        if mp is not None:
            mp.close()
    memory: dict[str, tuple[Sequence[int], str, int]] = {
        "capsule": (capsule_mem.per_worker, "zygote", capsule_mem.zygote),
        "multiprocessing": (mp_mem.per_worker, "forkserver", mp_mem.forkserver),
    }
    if ray_mem is None:
        return Collected(jobs, samples, memory, capsule_mem.parts)
    memory["ray"] = (ray_mem.per_worker, "daemons", ray_mem.daemons)
    return Collected(
        jobs, samples, memory, capsule_mem.parts, ray_mem.daemon_processes, left_behind
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(
        NAME,
        "capsule beside a multiprocessing worker and a Ray actor: calls, cold start, memory.",
        argv,
    )
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    started = time.perf_counter()
    reason = ray_skip_reason(quick=args.quick)
    skipped = {"ray": reason} if reason else {}
    collected = measure(sizes, with_ray=not reason)
    elapsed = time.perf_counter() - started

    (floor_spec, floor_samples), *measured = zip(collected.jobs, collected.samples, strict=True)
    floor_rounds_us = [percentile(chunk, 50) / 1000 for chunk in floor_samples]
    floor_extra = {**floor_spec.extra, "round_p50_us": [round(v, 3) for v in floor_rounds_us]}
    floor = replace(floor_spec, extra=floor_extra).summarize(flatten(floor_samples))
    measures: list[Measure] = [job.summarize(flatten(samples)) for job, samples in measured]
    summaries = {(m.extra["measure"], m.extra["system"]): m for m in measures}

    print_report(
        f"capsule beside its peers ({'quick' if args.quick else 'full'} run,"
        f" {sizes.rounds} interleaved rounds, {elapsed:.1f} s)",
        floor,
        measures,
    )
    print(
        f"  floor p50 per round: {min(floor_rounds_us):.1f} to {max(floor_rounds_us):.1f} us"
        " (the spread shows how steady the machine was)"
    )
    ratios = comparison(summaries)
    memory = memory_table(collected.memory, skipped)
    memory[0].update(collected.capsule_parts)  # capsule's row: outer, inner, view server
    print_comparison(ratios, memory, skipped)
    parts = collected.capsule_parts
    print(
        f"  capsule's idle container: outer {_mib(parts['outer_pss_bytes_mean'])}, inner"
        f" {_mib(parts['inner_pss_bytes_mean'])}, view server"
        f" {_mib(parts['view_server_pss_bytes_mean'])}"
    )
    if collected.ray_daemons is not None:
        ray_once = collected.memory["ray"][2]
        print(f"  Ray's daemons ({_mib(ray_once)}): {', '.join(collected.ray_daemons)}")
    if collected.left_behind:
        print(f"  killed after ray.shutdown() left them: {', '.join(collected.left_behind)}")

    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "msgspec", "ray"]),
        floor=floor,
        measures=measures,
        settings={"quick": args.quick, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    payload["comparison"] = ratios
    payload["memory"] = memory
    if collected.ray_daemons is not None:
        payload["ray_daemon_processes"] = collected.ray_daemons
        payload["ray_left_after_shutdown"] = collected.left_behind
    if skipped:
        payload["skipped"] = skipped
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
