"""Reading ``update`` of a ``[policy.NAME]`` table: how a new version of a feature takes over.

Checks each key on its own, reporting errors at their file, line and key; must not look
at other features, at versions or at what is running.

::

    [policy.spellcheck]
    update = { probation = "30s", keep = "10m", drain = "5s", queue = 1024,
               state_max = "16MiB", crashes = 2, min_calls = 20, error_rate = 0.1,
               p99_ratio = 3.0 }

A feature's capsule.toml has no say: ``update`` there is an error (see ``UPDATE_IN_BUNDLE``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from capsule._manifest._model import DEFAULT_UPDATE_POLICY, UpdatePolicy
from capsule._manifest._reader import Table, describe
from capsule._units import format_size, parse_duration, parse_size
from capsule.errors import ConfigError

__all__ = ["UPDATE_EXAMPLE", "UPDATE_IN_BUNDLE", "UPDATE_KEYS", "read_update_policy"]

UPDATE_KEYS: Final = (
    "probation",
    "keep",
    "drain",
    "queue",
    "state_max",
    "crashes",
    "min_calls",
    "error_rate",
    "p99_ratio",
)
UPDATE_EXAMPLE: Final = 'update = { probation = "30s", keep = "10m", crashes = 2 }'
#: why ``update`` in a capsule.toml is refused
UPDATE_IN_BUNDLE: Final = (
    "a feature cannot choose how it is updated: the app sets that in update of its "
    f"[policy.NAME] table in app.toml, e.g. {UPDATE_EXAMPLE}"
)
_MAX_QUEUE: Final = 1 << 16
_MAX_STATE: Final = 1 << 30
_MAX_COUNT: Final = 1 << 20
_MAX_RATIO: Final = 1000.0


def _size_up_to(maximum: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        size = parse_size(value)
        if size > maximum:
            raise ConfigError(f"must be at most {format_size(maximum)}, found {format_size(size)}")
        return size

    return convert


def _ratio(value: object) -> float:
    valid = f"a number from 1 to {_MAX_RATIO:g} (new p99 over the old version's p99)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected {valid}, found {describe(value)}")
    if not 1 <= value <= _MAX_RATIO:
        raise ConfigError(f"must be {valid}, found {value}")
    return float(value)


def read_update_policy(policy: Table) -> UpdatePolicy:
    """The ``update`` entry of one ``[policy.NAME]`` table; the default when absent or broken."""
    table = policy.table("update")
    if table is None:  # absent, or not a table (reported by Table.table)
        return DEFAULT_UPDATE_POLICY
    table.allow(*UPDATE_KEYS)
    probation = table.converted("probation", parse_duration)
    keep = table.converted("keep", parse_duration)
    drain = table.converted("drain", parse_duration)
    queue = table.integer("queue", minimum=1, maximum=_MAX_QUEUE)
    state_max = table.converted("state_max", _size_up_to(_MAX_STATE))
    crashes = table.integer("crashes", minimum=1, maximum=_MAX_COUNT)
    min_calls = table.integer("min_calls", minimum=1, maximum=_MAX_COUNT)
    error_rate = table.number("error_rate", above=0, maximum=1)
    p99_ratio = table.converted("p99_ratio", _ratio)
    default = DEFAULT_UPDATE_POLICY
    return UpdatePolicy(
        probation=default.probation if probation is None else probation,
        keep=default.keep if keep is None else keep,
        drain=default.drain if drain is None else drain,
        queue=default.queue if queue is None else queue,
        state_max=default.state_max if state_max is None else state_max,
        crashes=default.crashes if crashes is None else crashes,
        min_calls=default.min_calls if min_calls is None else min_calls,
        error_rate=default.error_rate if error_rate is None else error_rate,
        p99_ratio=default.p99_ratio if p99_ratio is None else p99_ratio,
    )
