"""The code a ``multiprocessing`` worker of the peers benchmark runs, and the call loops
its host side shares with it: an echo, and a caller timing calls to an echo.

Standard library only, since it is imported in every worker: it must not import
``_common``, trio, capsule or ray.
"""

from __future__ import annotations

import gc
import time
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["pipelined", "sequential", "serve_caller", "serve_echo"]


def serve_echo(conn: Connection) -> None:
    """Answer every message on ``conn`` with itself, until ``None`` or end of file."""
    with conn:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message is None:
                return
            conn.send(message)


def sequential(conn: Connection, count: int, warmup: int, payload: bytes) -> list[int]:
    """``warmup`` untimed then ``count`` timed request/reply calls on ``conn``; ns each."""
    for _ in range(warmup):
        conn.send(payload)
        conn.recv()
    clock = time.perf_counter_ns
    durations: list[int] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(count):
            start = clock()
            conn.send(payload)
            reply = conn.recv()
            durations.append(clock() - start)
            if reply != payload:
                raise RuntimeError(f"the echo worker answered {reply!r}")
    finally:
        gc.enable()
    return durations


def pipelined(conn: Connection, in_flight: int, calls: int, payload: bytes) -> int:
    """``calls`` calls on ``conn`` with ``in_flight`` requests outstanding; elapsed ns.

    The requests are sent ahead and each reply read lets one more go: the echo answers
    in order, so this keeps the pipe as full as ``in_flight`` callers each waiting for
    their reply would.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        sent = 0
        for _ in range(min(in_flight, calls)):
            conn.send(payload)
            sent += 1
        for _ in range(calls):
            if conn.recv() != payload:
                raise RuntimeError("the echo worker answered something else")
            if sent < calls:
                conn.send(payload)
                sent += 1
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def serve_caller(control: Connection, echo: Connection) -> None:
    """Run the host's commands on ``control``, calling the echo worker over ``echo``:
    ``("sequential", count, warmup, payload)`` answers the durations in ns,
    ``("pipelined", in_flight, calls, warmup, payload)`` the elapsed ns; ``None`` ends."""
    with control, echo:
        while True:
            try:
                command: Any = control.recv()
            except EOFError:
                return
            if command is None:
                echo.send(None)
                return
            if command[0] == "sequential":
                _, count, warmup, payload = command
                control.send(sequential(echo, count, warmup, payload))
            elif command[0] == "pipelined":
                _, in_flight, calls, warmup, payload = command
                pipelined(echo, in_flight, warmup, payload)
                control.send(pipelined(echo, in_flight, calls, payload))
            else:
                raise ValueError(f"serve_caller: unknown command {command!r}")
