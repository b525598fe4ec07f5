"""capsule's side of the peers benchmark: calls from the host and between containers,
cold start and idle memory, on the broker benchmark's app.

Jobs and measurements only: the run and its tables are ``peers.py``'s. Every job runs in
the worker thread of ``run_interleaved`` and hops back into trio for each slice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import trio
from _apps import ping
from _brokerbench.floor import PAYLOAD
from _common import Job, gc_paused
from _memory import container_pss, pss_bytes

from _peers.rows import (
    COLD,
    HOST_PIPELINED,
    HOST_SEQUENTIAL,
    WORKER_PIPELINED,
    WORKER_SEQUENTIAL,
    measure_job,
)
from _peers.sizes import IN_FLIGHT, Sizes
from capsule import Supervisor

__all__ = [
    "COLD_FEATURE",
    "CapsuleMemory",
    "call_idle",
    "capsule_jobs",
    "capsule_memory",
    "idle_names",
]

SYSTEM = "capsule"
#: the broker benchmark's feature answering ``ping``, stopped and started for cold starts
COLD_FEATURE = "quiet"


async def _host_sequential(sup: Supervisor, count: int, warmup: int) -> list[int]:
    clock = time.perf_counter_ns
    durations: list[int] = []
    with gc_paused():
        for _ in range(warmup):
            await sup.call("echo", "echo", PAYLOAD)
        for _ in range(count):
            start = clock()
            reply = await sup.call("echo", "echo", PAYLOAD)
            durations.append(clock() - start)
            if reply != PAYLOAD:
                raise RuntimeError(f"echo.echo answered {reply!r}")
    return durations


async def _worker_sequential(sup: Supervisor, count: int, warmup: int) -> list[int]:
    request = {"n": count, "warmup": warmup, "payload": PAYLOAD, "feature": "echo"}
    durations = await sup.call("caller", "bench", request)
    if not isinstance(durations, list) or len(durations) != count:
        raise RuntimeError(f"caller.bench returned {type(durations).__name__}")
    return [int(value) for value in durations]


async def _host_burst(sup: Supervisor, per_task: int) -> int:
    """``IN_FLIGHT`` host tasks each making ``per_task`` sequential calls; elapsed ns."""

    async def worker() -> None:
        for _ in range(per_task):
            if await sup.call("echo", "echo", PAYLOAD) != PAYLOAD:
                raise RuntimeError("echo.echo answered something else")

    start = time.perf_counter_ns()
    async with trio.open_nursery() as nursery:
        for _ in range(IN_FLIGHT):
            nursery.start_soon(worker)
    return time.perf_counter_ns() - start


async def _host_pipelined(sup: Supervisor, count: int, sizes: Sizes) -> list[float]:
    calls = IN_FLIGHT * sizes.pipeline_per_task
    per_call: list[float] = []
    for _ in range(count):
        await _host_burst(sup, sizes.pipeline_warmup_per_task)
        with gc_paused():
            per_call.append(await _host_burst(sup, sizes.pipeline_per_task) / calls)
    return per_call


async def _worker_pipelined(sup: Supervisor, count: int, sizes: Sizes) -> list[float]:
    request = {
        "tasks": IN_FLIGHT,
        "per_task": sizes.pipeline_per_task,
        "warmup": sizes.pipeline_warmup_per_task,
        "payload": PAYLOAD,
    }
    calls = IN_FLIGHT * sizes.pipeline_per_task
    return [int(await sup.call("caller", "pipeline", request)) / calls for _ in range(count)]


async def _cold_starts(sup: Supervisor, count: int, warmup: int) -> list[int]:
    """``count`` times: stop (untimed), then time start + the first call served."""
    clock = time.perf_counter_ns
    durations: list[int] = []
    with gc_paused():
        for index in range(warmup + count):
            await sup.stop(COLD_FEATURE)
            begin = clock()
            await sup.start(COLD_FEATURE)
            await ping(sup, COLD_FEATURE, index)
            if index >= warmup:
                durations.append(clock() - begin)
    return durations


def capsule_jobs(sup: Supervisor, sizes: Sizes) -> dict[str, Job]:
    """capsule's job for each measure, by measure key."""

    job = partial(measure_job, system=SYSTEM)

    per_burst = IN_FLIGHT * sizes.pipeline_per_task
    return {
        HOST_SEQUENTIAL.key: job(
            HOST_SEQUENTIAL,
            sizes.calls,
            lambda n: trio.from_thread.run(_host_sequential, sup, n, sizes.call_warmup),
        ),
        WORKER_SEQUENTIAL.key: job(
            WORKER_SEQUENTIAL,
            sizes.calls,
            lambda n: trio.from_thread.run(_worker_sequential, sup, n, sizes.call_warmup),
            note="timed inside the caller's container around each await ctx.call(...)",
        ),
        HOST_PIPELINED.key: job(
            HOST_PIPELINED,
            sizes.pipeline_bursts,
            lambda n: trio.from_thread.run(_host_pipelined, sup, n, sizes),
            calls_per_sample=per_burst,
        ),
        WORKER_PIPELINED.key: job(
            WORKER_PIPELINED,
            sizes.pipeline_bursts,
            lambda n: trio.from_thread.run(_worker_pipelined, sup, n, sizes),
            calls_per_sample=per_burst,
            note="timed inside the caller's container",
        ),
        COLD.key: job(
            COLD,
            sizes.cold_starts,
            lambda n: trio.from_thread.run(_cold_starts, sup, n, sizes.cold_start_warmup),
            note=f"sup.stop({COLD_FEATURE!r}) runs untimed before each sample",
        ),
    }


@dataclass(frozen=True)
class CapsuleMemory:
    """Idle containers' PSS (outer + inner + view server, each), and the zygote's once."""

    per_worker: list[int]
    zygote: int
    parts: dict[str, int]  # the mean of each part of a container: outer, inner, view server

    @property
    def mean(self) -> float:
        return math.fsum(self.per_worker) / len(self.per_worker)


def idle_names(sizes: Sizes) -> list[str]:
    """The features added to the app for the memory snapshot, each answering ``ping``."""
    return [f"idle{index:03d}" for index in range(sizes.idle_workers)]


async def call_idle(sup: Supervisor, sizes: Sizes) -> None:
    """Call each idle feature once, so that every container has served a call."""
    for name in idle_names(sizes):
        await ping(sup, name, 0)


async def capsule_memory(sup: Supervisor, sizes: Sizes) -> CapsuleMemory:
    """The PSS of each idle feature's container and the zygote's: each is called once more
    (a container restarted meanwhile has then served a call too), then left idle for
    ``sizes.settle_s``."""
    await call_idle(sup, sizes)
    await trio.sleep(sizes.settle_s)
    per_worker: list[int] = []
    parts: list[tuple[int, int, int]] = []
    for name in idle_names(sizes):
        instance = sup.feature(name).instance
        if instance is None:
            raise RuntimeError(f"{name} has no running container")
        view_pid = None if instance.view is None else instance.view.pid
        outer, inner, view, _ = container_pss(instance.pid, view_pid)
        per_worker.append(outer + inner + view)
        parts.append((outer, inner, view))
    zygote = sup._machinery.zygote
    if zygote is None:
        raise RuntimeError("the supervisor has no zygote")
    columns = zip(*parts, strict=True)
    means = {
        f"{part}_pss_bytes_mean": round(math.fsum(values) / len(values))
        for part, values in zip(("outer", "inner", "view_server"), columns, strict=True)
    }
    return CapsuleMemory(per_worker, pss_bytes(zygote.pid), means)
