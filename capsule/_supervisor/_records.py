"""The records the supervisor reports about a running app: a feature's statistics, an
installed plugin, what an update did.

Frozen data only: the command line decodes them from a running app's control socket, so
this module must not import the supervisor's machinery (trio, the broker, the spawn path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["FeatureStatistics", "PluginInfo", "UpdateReport"]


@final
@dataclass(frozen=True, slots=True)
class FeatureStatistics:
    """A snapshot of one feature; memory and cpu figures come from its cgroup (None without)."""

    name: str
    version: str
    state: str
    pid: int | None
    restarts: int
    calls_total: int
    calls_in_flight: int
    messages: int
    denied: int
    events_dropped: int
    uptime: float | None
    last_exit: str | None
    memory_current: int | None
    memory_limit: int | None
    oom_kills: int
    pids_current: int | None
    cpu_usage_ns: int | None
    files_allowed: int = 0  # file operations its view's server allowed (reported each second)
    files_denied: int = 0  # and refused
    connections: int = 0  # sockets the broker opened for it (ctx.connect and ctx.listen)
    tokens_renewed: int = 0  # token renewals, over all its containers
    renewals_failed: int = 0  # renewal attempts that failed (each logged and audited)
    renewal_error: str | None = None  # why the last renewal failed, until one succeeds
    # what it makes the broker hold, and its limits ([policy.NAME.limits] of app.toml)
    subscriptions: int = 0  # patterns subscribed (the same pattern twice is one)
    subscriptions_limit: int = 0
    delegations: int = 0  # tokens it delegated that are still live
    delegations_limit: int = 0
    queued: int = 0  # bytes queued towards its container, not read yet
    queue_limit: int = 0  # past it, events to it are dropped (it is told) or it is ended
    update: str | None = None  # a live update under way: "1.0 -> 1.1 (probation)", say
    held: int = 0  # calls held while the route switches versions
    variants: str | None = None  # an experiment under way: "1.2.0 90% / 1.3.0 10%", say
    # an on-demand feature (start = "on-demand" in app.toml); zeros and None for an eager one
    on_demand: bool = False
    wakes: int = 0  # containers started by a call, stream or event to it while stopped
    last_wake: float | None = None  # when it last woke (Unix time)
    time_to_ready: float | None = None  # seconds from that wake to ready
    idle_left: float | None = None  # seconds until it is stopped as idle, if nothing happens


@final
@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin: its record in ``plugins.json`` and where it is now (``state``:
    a feature state, or ``not started`` with the ``problem`` that kept it from starting)."""

    name: str
    version: str
    bundle: str
    installed: float
    capabilities: tuple[str, ...]
    state: str
    problem: str | None = None


@final
@dataclass(frozen=True, slots=True)
class UpdateReport:
    """What an update or a rollback did, or for a dry run what an update would do.

    ``pause`` is how long new calls were held (seconds), ``held`` how many were,
    ``stragglers`` the calls still running on the old version when the drain time was up
    (they finish there), ``state_bytes`` the size of the state moved (None: the old version
    has no ``export_state``). ``steps`` says in words what happened, or would.
    """

    feature: str
    action: str  # "update", "rollback" or "dry-run" (plain str: it travels on the wire)
    from_version: str
    to_version: str
    diff: str = ""
    widens: bool = False
    steps: tuple[str, ...] = ()
    pause: float = 0.0
    held: int = 0
    stragglers: int = 0
    state_bytes: int | None = None
    cold: bool = False  # no old container to switch to: stopped, then started
