"""The ``multiprocessing`` peer: echo workers and a caller worker started by the
forkserver, their calls, cold start and idle memory.

Starts and ends its own workers and forkserver only: it must leave no process behind.
The workers come from the ``forkserver`` start method, which forks each one from a
small server process that has imported only the worker code (``_peers.mpworker``):
the closest match to capsule's zygote, and a worker that does not share this process's
pages (a plain ``fork`` of this process, which holds trio, capsule and maybe Ray,
would make its memory and its start a measure of this process instead).
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.forkserver
import os
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Final

from _brokerbench.floor import PAYLOAD
from _common import Job, gc_paused
from _memory import children, pss_bytes

from _peers.mpworker import pipelined, sequential, serve_caller, serve_echo
from _peers.rows import (
    COLD,
    HOST_PIPELINED,
    HOST_SEQUENTIAL,
    WORKER_PIPELINED,
    WORKER_SEQUENTIAL,
    measure_job,
)
from _peers.sizes import IN_FLIGHT, Sizes

__all__ = ["MpMemory", "MpPeers"]

SYSTEM: Final = "multiprocessing"
JOIN_TIMEOUT_S: Final = 5.0


def _context() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    if not isinstance(context, ForkServerContext):
        raise TypeError(f"no forkserver context here: {context!r}")
    # the worker code, imported once in the forkserver; "__main__" (peers.py, which
    # imports nothing heavy at its top) first, since it makes _peers importable there
    context.set_forkserver_preload(["__main__", "_peers.mpworker"])
    return context


@dataclass(frozen=True)
class MpMemory:
    """Idle workers' PSS, and the forkserver's once."""

    per_worker: list[int]
    forkserver: int

    @property
    def mean(self) -> float:
        return math.fsum(self.per_worker) / len(self.per_worker)


class MpPeers:
    """An echo worker the host calls, and a caller worker calling an echo of its own."""

    def __init__(self) -> None:
        self.context = _context()
        self.processes: list[BaseProcess] = []
        self.echo, self.echo_process = self._start_echo()
        self.processes.append(self.echo_process)
        control, control_child = self.context.Pipe()
        caller_end, echo_end = self.context.Pipe()
        self.processes.append(self._start(serve_echo, echo_end))
        self.processes.append(self._start(serve_caller, control_child, caller_end))
        self.control = control
        self.echo.send(PAYLOAD)
        if self.echo.recv() != PAYLOAD:
            raise RuntimeError("the multiprocessing echo worker does not echo")
        self._worker_sequential(1, 0)  # the caller worker and its echo are up

    def _start(self, target: Any, *ends: Connection) -> BaseProcess:
        process = self.context.Process(target=target, args=ends, daemon=True)
        process.start()
        for end in ends:
            end.close()  # the worker holds its own copy now
        return process

    def _start_echo(self) -> tuple[Connection, BaseProcess]:
        ours, theirs = self.context.Pipe()
        return ours, self._start(serve_echo, theirs)

    # -- jobs, run from the worker thread of run_interleaved ----------------------------------

    def _host_pipelined(self, count: int, sizes: Sizes) -> list[float]:
        calls = IN_FLIGHT * sizes.pipeline_per_task
        per_call: list[float] = []
        for _ in range(count):
            pipelined(self.echo, IN_FLIGHT, IN_FLIGHT * sizes.pipeline_warmup_per_task, PAYLOAD)
            per_call.append(pipelined(self.echo, IN_FLIGHT, calls, PAYLOAD) / calls)
        return per_call

    def _worker_sequential(self, count: int, warmup: int) -> list[int]:
        self.control.send(("sequential", count, warmup, PAYLOAD))
        durations: list[int] = self.control.recv()
        return durations

    def _worker_pipelined(self, count: int, sizes: Sizes) -> list[float]:
        calls = IN_FLIGHT * sizes.pipeline_per_task
        warmup = IN_FLIGHT * sizes.pipeline_warmup_per_task
        per_call: list[float] = []
        for _ in range(count):
            self.control.send(("pipelined", IN_FLIGHT, calls, warmup, PAYLOAD))
            per_call.append(int(self.control.recv()) / calls)
        return per_call

    def _cold_starts(self, count: int, warmup: int) -> list[int]:
        clock = time.perf_counter_ns
        durations: list[int] = []
        with gc_paused():
            for index in range(warmup + count):
                begin = clock()
                conn, process = self._start_echo()
                conn.send(PAYLOAD)
                reply = conn.recv()
                served = clock()
                self._stop(conn, process)
                if reply != PAYLOAD:
                    raise RuntimeError(f"a new echo worker answered {reply!r}")
                if index >= warmup:
                    durations.append(served - begin)
        return durations

    def jobs(self, sizes: Sizes) -> dict[str, Job]:
        """The multiprocessing job for each measure, by measure key."""

        job = partial(measure_job, system=SYSTEM)

        per_burst = IN_FLIGHT * sizes.pipeline_per_task
        return {
            HOST_SEQUENTIAL.key: job(
                HOST_SEQUENTIAL,
                sizes.calls,
                lambda n: sequential(self.echo, n, sizes.call_warmup, PAYLOAD),
            ),
            WORKER_SEQUENTIAL.key: job(
                WORKER_SEQUENTIAL,
                sizes.calls,
                lambda n: self._worker_sequential(n, sizes.call_warmup),
                note="timed inside the calling worker",
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
                note="timed inside the calling worker",
            ),
            COLD.key: job(
                COLD,
                sizes.cold_starts,
                lambda n: self._cold_starts(n, sizes.cold_start_warmup),
                note="the worker is told to end and joined, untimed, after each sample",
            ),
        }

    # -- memory and the end --------------------------------------------------------------------

    def memory(self, sizes: Sizes) -> MpMemory:
        """Start ``sizes.idle_workers`` echo workers, call each once, let them idle, read PSS."""
        started = [self._start_echo() for _ in range(sizes.idle_workers)]
        try:
            for conn, _ in started:
                conn.send(PAYLOAD)
                if conn.recv() != PAYLOAD:
                    raise RuntimeError("an idle echo worker does not echo")
            time.sleep(sizes.settle_s)
            per_worker = [pss_bytes(_pid(process)) for _, process in started]
            return MpMemory(per_worker, pss_bytes(self.forkserver_pid()))
        finally:
            for conn, process in started:
                self._stop(conn, process)

    @staticmethod
    def forkserver_pid() -> int:
        """The forkserver's pid: the child of this process running its main loop."""
        for pid in children(os.getpid()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if b"multiprocessing.forkserver" in cmdline.read():
                        return pid
            except FileNotFoundError:
                continue
        raise RuntimeError("no multiprocessing forkserver below this process")

    @staticmethod
    def _stop(conn: Connection, process: BaseProcess) -> None:
        """Tell the worker to end, then wait for it; killed (by its pid) if it does not."""
        gone: OSError | None = None
        try:
            conn.send(None)
        except (BrokenPipeError, ConnectionResetError) as error:
            gone = error  # it ended already: its exit code, checked below, says how
        conn.close()
        process.join(JOIN_TIMEOUT_S)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise RuntimeError(f"multiprocessing worker {process.pid} did not end when told")
        if process.exitcode != 0:
            raise RuntimeError(
                f"multiprocessing worker {process.pid} exited {process.exitcode}"
            ) from gone

    def close(self) -> None:
        """End every worker, then the forkserver."""
        self.control.send(None)  # the caller worker ends its echo, then itself
        self.control.close()
        self._stop(self.echo, self.echo_process)
        for process in self.processes:
            process.join(JOIN_TIMEOUT_S)
            if process.exitcode is None:
                process.kill()
                process.join()
        # the stdlib's own stop: closes the server's socket and waits for it to exit
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]


def _pid(process: BaseProcess) -> int:
    if process.pid is None:
        raise RuntimeError("a multiprocessing worker has no pid")
    return process.pid
