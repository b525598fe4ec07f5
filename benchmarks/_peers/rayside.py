"""The Ray peer: a local Ray cluster started and shut down here, echo actors and a caller
actor, their calls, cold start and idle memory (per actor, and Ray's daemons once).

Starts and ends its own cluster only: it must leave no process or directory behind, and
is never imported by a ``--quick`` run (``peers.py`` imports it only to run Ray).
"""

from __future__ import annotations

import collections
import gc
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import ray
import ray.cloudpickle
from _brokerbench.floor import PAYLOAD
from _common import Job, gc_paused
from _memory import children, descendants, pss_bytes

from _peers.rows import (
    COLD,
    HOST_PIPELINED,
    HOST_SEQUENTIAL,
    WORKER_PIPELINED,
    WORKER_SEQUENTIAL,
    measure_job,
)
from _peers.sizes import IN_FLIGHT, Sizes

__all__ = ["RayMemory", "RayPeers"]

SYSTEM: Final = "ray"
NUM_CPUS: Final = 2
OBJECT_STORE_BYTES: Final = 100 * 1024 * 1024  # Ray's least is 75 MiB; calls of 64 B need none
GONE_TIMEOUT_S: Final = 10.0


def pipelined_calls(handle: Any, in_flight: int, calls: int, payload: bytes) -> int:
    """``calls`` calls to ``handle.echo`` with ``in_flight`` outstanding; elapsed ns.

    An actor runs its calls in the order they were sent, so the oldest reference is
    awaited first and each reply lets one more call go, as for ``multiprocessing``.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        pending = collections.deque(
            handle.echo.remote(payload) for _ in range(min(in_flight, calls))
        )
        sent = len(pending)
        while pending:
            if ray.get(pending.popleft()) != payload:
                raise RuntimeError("the echo actor answered something else")
            if sent < calls:
                pending.append(handle.echo.remote(payload))
                sent += 1
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def sequential_calls(handle: Any, count: int, warmup: int, payload: bytes) -> list[int]:
    """``warmup`` untimed then ``count`` timed ``ray.get(handle.echo.remote(...))``; ns each."""
    for _ in range(warmup):
        ray.get(handle.echo.remote(payload))
    clock = time.perf_counter_ns
    durations: list[int] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(count):
            start = clock()
            reply = ray.get(handle.echo.remote(payload))
            durations.append(clock() - start)
            if reply != payload:
                raise RuntimeError(f"the echo actor answered {reply!r}")
    finally:
        gc.enable()
    return durations


class Echo:
    """An actor answering ``echo`` with its request."""

    def echo(self, request: Any) -> Any:
        return request

    def pid(self) -> int:
        return os.getpid()


class Caller:
    """An actor timing calls to another actor, as the host does to its echo."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def sequential(self, count: int, warmup: int, payload: bytes) -> list[int]:
        return sequential_calls(self.target, count, warmup, payload)

    def pipelined(self, in_flight: int, calls: int, warmup: int, payload: bytes) -> int:
        pipelined_calls(self.target, in_flight, warmup, payload)
        return pipelined_calls(self.target, in_flight, calls, payload)

    def pid(self) -> int:
        return os.getpid()


@dataclass(frozen=True)
class RayMemory:
    """Idle actors' PSS, and Ray's daemons' once (with the names of their processes)."""

    per_worker: list[int]
    daemons: int
    daemon_processes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return math.fsum(self.per_worker) / len(self.per_worker)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return ""


# Ray's workers cannot import this module (benchmarks/ is not on their sys.path): the actor
# classes and the functions they call travel by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]


class RayPeers:
    """A local Ray cluster (no dashboard, ``NUM_CPUS`` CPUs, its own temporary directory),
    an echo actor the driver calls and a caller actor calling an echo actor of its own."""

    def __init__(self) -> None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report sent anywhere
        before = set(children(os.getpid()))
        # short: Ray's Unix sockets live beneath it, and their paths are limited to 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="capsule-peers-ray-", dir="/tmp")
        self.seen: dict[int, str] = {}
        ray.init(
            address="local",
            num_cpus=NUM_CPUS,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            _temp_dir=self.temp_dir,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        self.roots = sorted(set(children(os.getpid())) - before)
        # Any: Ray's types do not know the methods .remote() adds
        self.echo_class: Any = ray.remote(num_cpus=0)(Echo)
        self.caller_class: Any = ray.remote(num_cpus=0)(Caller)
        self.echo: Any = self.echo_class.remote()
        self.caller_echo: Any = self.echo_class.remote()
        self.caller: Any = self.caller_class.remote(self.caller_echo)
        self.actor_pids = {
            int(ray.get(actor.pid.remote())) for actor in (self.echo, self.caller_echo, self.caller)
        }
        self._note_processes()

    def _note_processes(self) -> None:
        """Remember every process of the cluster, to check after shutdown that all ended."""
        for root in self.roots:
            for pid in descendants(root):
                self.seen.setdefault(pid, _comm(pid))

    # -- jobs -----------------------------------------------------------------------------------

    def _host_pipelined(self, count: int, sizes: Sizes) -> list[float]:
        calls = IN_FLIGHT * sizes.pipeline_per_task
        per_call: list[float] = []
        for _ in range(count):
            pipelined_calls(
                self.echo, IN_FLIGHT, IN_FLIGHT * sizes.pipeline_warmup_per_task, PAYLOAD
            )
            per_call.append(pipelined_calls(self.echo, IN_FLIGHT, calls, PAYLOAD) / calls)
        return per_call

    def _worker_sequential(self, count: int, warmup: int) -> list[int]:
        durations: list[int] = ray.get(self.caller.sequential.remote(count, warmup, PAYLOAD))
        return durations

    def _worker_pipelined(self, count: int, sizes: Sizes) -> list[float]:
        calls = IN_FLIGHT * sizes.pipeline_per_task
        warmup = IN_FLIGHT * sizes.pipeline_warmup_per_task
        return [
            int(ray.get(self.caller.pipelined.remote(IN_FLIGHT, calls, warmup, PAYLOAD))) / calls
            for _ in range(count)
        ]

    def _cold_starts(self, count: int, warmup: int) -> list[int]:
        clock = time.perf_counter_ns
        durations: list[int] = []
        with gc_paused():
            for index in range(warmup + count):
                begin = clock()
                actor = self.echo_class.remote()
                reply = ray.get(actor.echo.remote(PAYLOAD))
                served = clock()
                ray.kill(actor)
                if reply != PAYLOAD:
                    raise RuntimeError(f"a new echo actor answered {reply!r}")
                if index >= warmup:
                    durations.append(served - begin)
        return durations

    def jobs(self, sizes: Sizes) -> dict[str, Job]:
        """The Ray job for each measure, by measure key."""

        job = partial(measure_job, system=SYSTEM)

        per_burst = IN_FLIGHT * sizes.pipeline_per_task
        return {
            HOST_SEQUENTIAL.key: job(
                HOST_SEQUENTIAL,
                sizes.calls,
                lambda n: sequential_calls(self.echo, n, sizes.call_warmup, PAYLOAD),
            ),
            WORKER_SEQUENTIAL.key: job(
                WORKER_SEQUENTIAL,
                sizes.calls,
                lambda n: self._worker_sequential(n, sizes.call_warmup),
                note="timed inside the calling actor",
            ),
            HOST_PIPELINED.key: job(
                HOST_PIPELINED,
                sizes.pipeline_bursts,
                lambda n: self._host_pipelined(n, sizes),
                calls_per_sample=per_burst,
            ),
            WORKER_PIPELINED.key: job(
                WORKER_PIPELINED,
                sizes.pipeline_bursts,
                lambda n: self._worker_pipelined(n, sizes),
                calls_per_sample=per_burst,
                note="timed inside the calling actor",
            ),
            COLD.key: job(
                COLD,
                sizes.cold_starts,
                lambda n: self._cold_starts(n, sizes.cold_start_warmup),
                note="ray.kill(actor) runs untimed after each sample",
            ),
        }

    # -- memory and the end --------------------------------------------------------------------

    def memory(self, sizes: Sizes) -> RayMemory:
        """Start ``sizes.idle_workers`` echo actors, call each once, let them idle, read PSS;
        and the PSS of every other process of the cluster (its daemons and idle workers)."""
        actors = [self.echo_class.remote() for _ in range(sizes.idle_workers)]
        try:
            for actor in actors:
                if ray.get(actor.echo.remote(PAYLOAD)) != PAYLOAD:
                    raise RuntimeError("an idle echo actor does not echo")
            pids = [int(ray.get(actor.pid.remote())) for actor in actors]
            time.sleep(sizes.settle_s)
            self._note_processes()
            per_worker = [pss_bytes(pid) for pid in pids]
            actors_all = self.actor_pids | set(pids)
            daemons = [
                pid for root in self.roots for pid in descendants(root) if pid not in actors_all
            ]
            names = sorted(_comm(pid) for pid in daemons)
            return RayMemory(per_worker, sum(pss_bytes(pid) for pid in daemons), names)
        finally:
            for actor in actors:
                ray.kill(actor)

    def close(self) -> list[str]:
        """Shut the cluster down and remove its directory; the processes that outlived the
        shutdown (each killed then, by its pid), as ``"pid name"``: none, normally."""
        self._note_processes()
        ray.shutdown()
        deadline = time.monotonic() + GONE_TIMEOUT_S
        left = self._alive()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._alive()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir)
        return [f"{pid} {self.seen[pid]}" for pid in left]

    def _alive(self) -> list[int]:
        """The processes seen in the cluster that are still there under the same name."""
        return [pid for pid, name in self.seen.items() if _comm(pid) == name and name]
