"""The rows the peers benchmark compares: which measure, which system, and the row's name.

Names only: it measures nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from _common import Job

from _peers.sizes import IN_FLIGHT

__all__ = [
    "COLD",
    "HOST_PIPELINED",
    "HOST_SEQUENTIAL",
    "MEASURES",
    "SYSTEMS",
    "WORKER_PIPELINED",
    "WORKER_SEQUENTIAL",
    "Measure",
    "measure_job",
    "row_extra",
    "row_name",
]

SYSTEMS: Final = ("capsule", "multiprocessing", "ray")


@dataclass(frozen=True)
class Measure:
    """One thing measured for each system: its label, and how each system's row says it."""

    key: str
    label: str
    paths: dict[str, str]  # system -> what the row times, in its own terms
    rate: bool = False  # reported as calls/s (a time per call in the main table)


HOST_SEQUENTIAL: Final = Measure(
    "host_sequential",
    "call 64 B, sequential, host -> worker",
    {
        "capsule": "host sup.call -> container (one socket hop each way)",
        "multiprocessing": "parent -> worker over a Pipe",
        "ray": "driver -> actor, ray.get(actor.echo.remote(...))",
    },
)
WORKER_SEQUENTIAL: Final = Measure(
    "worker_sequential",
    "call 64 B, sequential, worker -> worker",
    {
        "capsule": "container -> container, brokered (two hops each way)",
        "multiprocessing": "worker -> worker over a direct Pipe",
        "ray": "actor -> actor, direct",
    },
)
HOST_PIPELINED: Final = Measure(
    "host_pipelined",
    f"pipelined calls, {IN_FLIGHT} in flight, host -> worker",
    {
        "capsule": f"{IN_FLIGHT} trio tasks of the host calling sup.call",
        "multiprocessing": f"{IN_FLIGHT} requests ahead on one Pipe",
        "ray": f"{IN_FLIGHT} object refs outstanding from the driver",
    },
    rate=True,
)
WORKER_PIPELINED: Final = Measure(
    "worker_pipelined",
    f"pipelined calls, {IN_FLIGHT} in flight, worker -> worker",
    {
        "capsule": f"{IN_FLIGHT} trio tasks of a container, brokered",
        "multiprocessing": f"{IN_FLIGHT} requests ahead on a direct Pipe",
        "ray": f"{IN_FLIGHT} object refs outstanding from an actor",
    },
    rate=True,
)
COLD: Final = Measure(
    "cold_start",
    "cold start, request to first call served",
    {
        "capsule": "sup.start() + first sup.call() (zygote fork, sandbox, view)",
        "multiprocessing": "forkserver Process.start() + first call",
        "ray": "Actor.remote() + first ray.get(call)",
    },
)
MEASURES: Final = (HOST_SEQUENTIAL, WORKER_SEQUENTIAL, HOST_PIPELINED, WORKER_PIPELINED, COLD)


def row_name(measure: Measure, system: str) -> str:
    """The main table's name of ``system``'s row for ``measure``."""
    prefix = f"{measure.label}: " if not measure.rate else f"{measure.label}, time per call: "
    return f"{prefix}{system}, {measure.paths[system]}"


def row_extra(measure: Measure, system: str) -> dict[str, Any]:
    """What the JSON row carries besides the figures: the measure and the system."""
    return {"measure": measure.key, "system": system, "path": measure.paths[system]}


def measure_job(measure: Measure, samples: int, run: Any, *, system: str, **more: Any) -> Job:
    """``system``'s job for ``measure``: its row name and JSON extras, ``samples`` samples of
    ``run``, and any other ``Job`` option."""
    return Job(row_name(measure, system), samples, run, extra=row_extra(measure, system), **more)
