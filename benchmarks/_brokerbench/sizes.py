"""How many samples the broker benchmark takes: a full run and a ``--quick`` one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["FULL", "QUICK", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    floor_round_trips: int
    floor_warmup: int  # per round
    calls: int  # sequential container -> container calls
    call_warmup: int  # per round
    host_calls: int  # sequential host -> container calls
    pipeline_per_task: int  # calls each task makes per round (one sample per round)
    pipeline_warmup_per_task: int  # per round
    events: int  # events per burst (one burst, one sample, per round)
    event_stall_s: float  # the subscriber gives up waiting after this long without an event
    check_batch: int  # calls per timing sample for the per-message check
    check_samples: int
    check_warmup: int  # batches, per round
    admissions: int
    admission_warmup: int  # per round
    quiet_pings: int  # per condition (alone, publish flood, call flood)
    quiet_warmup: int  # per round and condition
    flood_ramp_s: float  # how long a flood runs before the quiet calls start
    subscriptions: int  # distinct patterns held while a fresh topic is matched


FULL: Final = Sizes(
    rounds=10,
    floor_round_trips=10_000,
    floor_warmup=100,
    calls=5_000,
    call_warmup=50,
    host_calls=3_000,
    pipeline_per_task=80,
    pipeline_warmup_per_task=5,
    events=20_000,
    event_stall_s=0.5,
    check_batch=1_000,
    check_samples=1_000,
    check_warmup=5,
    admissions=3_000,
    admission_warmup=20,
    quiet_pings=3_000,
    quiet_warmup=20,
    flood_ramp_s=0.05,
    subscriptions=100_000,
)
QUICK: Final = Sizes(
    rounds=3,
    floor_round_trips=1_500,
    floor_warmup=50,
    calls=600,
    call_warmup=20,
    host_calls=300,
    pipeline_per_task=10,
    pipeline_warmup_per_task=2,
    events=3_000,
    event_stall_s=0.3,
    check_batch=1_000,
    check_samples=60,
    check_warmup=2,
    admissions=300,
    admission_warmup=10,
    quiet_pings=300,
    quiet_warmup=10,
    flood_ramp_s=0.03,
    subscriptions=10_000,
)
