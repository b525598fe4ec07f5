"""How many samples the peers benchmark takes: a full run and a ``--quick`` one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["FULL", "IN_FLIGHT", "QUICK", "Sizes"]

IN_FLIGHT: Final = 64  # calls outstanding in the pipelined measures


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    floor_round_trips: int
    floor_warmup: int  # per round
    calls: int  # sequential calls, for each system and path
    call_warmup: int  # per round
    pipeline_bursts: int  # one sample each: IN_FLIGHT x pipeline_per_task calls
    pipeline_per_task: int
    pipeline_warmup_per_task: int  # per burst
    cold_starts: int  # for each system
    cold_start_warmup: int  # per round
    idle_workers: int  # workers (containers, processes, actors) up for the memory snapshot
    settle_s: float  # wait after the last worker answered, before reading PSS


FULL: Final = Sizes(
    rounds=5,
    floor_round_trips=5_000,
    floor_warmup=100,
    calls=2_000,
    call_warmup=50,
    pipeline_bursts=10,
    pipeline_per_task=40,
    pipeline_warmup_per_task=2,
    cold_starts=20,
    cold_start_warmup=1,
    idle_workers=10,
    settle_s=1.0,
)
QUICK: Final = Sizes(
    rounds=2,
    floor_round_trips=600,
    floor_warmup=20,
    calls=150,
    call_warmup=10,
    pipeline_bursts=2,
    pipeline_per_task=4,
    pipeline_warmup_per_task=1,
    cold_starts=2,
    cold_start_warmup=0,
    idle_workers=2,
    settle_s=0.2,
)
