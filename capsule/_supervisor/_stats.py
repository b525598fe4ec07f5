"""A snapshot of a whole app run, as ``Supervisor.statistics()`` returns it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

from capsule._supervisor._handle import FeatureStatistics
from capsule._supervisor._variant_stats import VariantsStatus

__all__ = ["SupervisorStatistics"]


@final
@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of the whole app."""

    app: str
    isolation: str
    cgroups: str
    features: Mapping[str, FeatureStatistics]
    containers_started: int
    restarts: int
    quarantined: tuple[str, ...]
    calls_routed: int
    events_published: int
    allowed: int
    denied: int
    audit_path: str | None
    variants: Mapping[str, VariantsStatus] = dataclasses.field(default_factory=dict)
    """The experiments under way, by feature: a row per variant (see ``set_variants``)."""
