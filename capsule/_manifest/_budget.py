"""Reading ``[policy.NAME.limits]`` of an app.toml: what a feature may make the broker hold.

Checks each key on its own, reporting errors at their file, line and key; must not look
at other features or at the running broker.
"""

from __future__ import annotations

from typing import Final

from capsule._manifest._model import DEFAULT_BROKER_LIMITS, BrokerLimits
from capsule._manifest._reader import Table
from capsule._units import format_size, parse_size
from capsule.errors import ConfigError

__all__ = ["BROKER_LIMIT_KEYS", "read_broker_limits"]

BROKER_LIMIT_KEYS: Final = ("subscriptions", "delegations", "queue", "lagged")
_MIN_QUEUE: Final = 64 << 10
_MAX_QUEUE: Final = 1 << 30
_LAGGED: Final = ("drop", "close")


def _queue_size(value: object) -> int:
    size = parse_size(value)
    if not _MIN_QUEUE <= size <= _MAX_QUEUE:
        raise ConfigError(
            f"must be from {format_size(_MIN_QUEUE)} to {format_size(_MAX_QUEUE)}, "
            f"found {format_size(size)}"
        )
    return size


def read_broker_limits(table: Table | None) -> BrokerLimits:
    """``limits = { subscriptions = 256, delegations = 16, queue = "1MiB", lagged = "close" }``."""
    if table is None:
        return DEFAULT_BROKER_LIMITS
    table.allow(*BROKER_LIMIT_KEYS)
    subscriptions = table.integer("subscriptions", minimum=1, maximum=1 << 20)
    delegations = table.integer("delegations", minimum=0, maximum=1 << 16)
    queue = table.converted("queue", _queue_size)
    lagged = table.choice("lagged", _LAGGED)
    default = DEFAULT_BROKER_LIMITS
    return BrokerLimits(
        subscriptions=default.subscriptions if subscriptions is None else subscriptions,
        delegations=default.delegations if delegations is None else delegations,
        queue=default.queue if queue is None else queue,
        lagged="close" if lagged == "close" else default.lagged if lagged is None else "drop",
    )
