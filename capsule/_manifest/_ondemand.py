"""Reading ``start``, ``idle_stop`` and ``wake_on`` of a ``[policy.NAME]`` table: when a
feature's container runs, and checking that ``requires`` can be met under it.

Checks each key on its own, reporting errors at their file, line and key; must not look
at what is running.

::

    [policy.exporter]
    start = "on-demand"
    idle_stop = "5m"
    wake_on = ["notes.saved"]

A feature's capsule.toml has no say: the app decides how its features run, as it decides
their authority.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from capsule._manifest._model import DEFAULT_START, StartPolicy
from capsule._manifest._reader import Table, describe
from capsule._tokens._caps import parse_capability, target_covers
from capsule._units import parse_duration
from capsule.errors import ConfigError

if TYPE_CHECKING:
    from capsule._manifest._app import ParsedApp
    from capsule._manifest._feature import ParsedFeature

__all__ = ["START_KEYS", "START_MODES", "check_on_demand", "read_start_policy"]

START_KEYS: Final = ("start", "idle_stop", "wake_on")
START_MODES: Final = ("eager", "on-demand")
_MIN_IDLE: Final = 0.05


def _idle(value: object) -> float | None:
    if value == "never":
        return None
    try:
        seconds = parse_duration(value)
    except ConfigError:
        raise ConfigError(
            f'expected a duration such as "30s" or "5m", or "never", found {describe(value)}'
        ) from None
    if seconds < _MIN_IDLE:
        raise ConfigError(f'must be at least 50ms (or "never"), found "{value}"')
    return seconds


def _wake_pattern(value: str) -> str | None:
    try:
        parse_capability(f"icc:subscribe:{value}")
    except ConfigError as exc:
        return f'"{value}" is not a topic pattern ({exc.message}), e.g. "notes.*"'
    return None


def read_start_policy(policy: Table) -> StartPolicy:
    """``start``, ``idle_stop`` and ``wake_on`` of one ``[policy.NAME]`` table; the default
    (eager) when absent or broken. ``idle_stop`` and ``wake_on`` need ``start = "on-demand"``."""
    mode = policy.choice("start", START_MODES)
    idle = policy.converted("idle_stop", _idle)
    wake_on = tuple(value for _, value in policy.strings("wake_on", _wake_pattern))
    if mode != "on-demand":  # eager, absent, or broken (reported already)
        for key in ("idle_stop", "wake_on"):
            if key in policy and (mode == "eager" or "start" not in policy):
                policy.doc.error(
                    (*policy.key, key),
                    f'{key} applies to an on-demand feature only: add start = "on-demand" '
                    f"to [policy.{policy.key[-1]}]",
                )
        return DEFAULT_START
    return StartPolicy(
        on_demand=True,
        idle_stop=DEFAULT_START.idle_stop if "idle_stop" not in policy.data else idle,
        wake_on=wake_on,
    )


def check_on_demand(features: Mapping[str, ParsedFeature], app: ParsedApp) -> None:
    """Report each eager feature that ``requires`` an on-demand one, at that requires entry:
    ``requires`` means "running before I start", which an on-demand feature is not. A feature
    that only calls an on-demand one needs no ``requires``: the call starts it. An on-demand
    feature may require either kind (on-demand ones are started first when it is woken).
    And each ``wake_on`` topic the policy does not let the feature subscribe to (it could
    never wake it)."""
    policies = app.policies
    on_demand = {name for name, parsed in policies.items() if parsed.policy.start.on_demand}
    for name in on_demand:
        policy = policies[name].policy
        for pattern in policy.start.wake_on:
            if not any(target_covers("icc", approved, pattern) for approved in policy.subscribe):
                app.doc.error(
                    (*policies[name].key, "wake_on"),
                    f'wakes on "{pattern}", which [policy.{name}] does not let it subscribe '
                    f'to: add it to subscribe (e.g. subscribe = ["{pattern}"])',
                )
    for name, parsed in features.items():
        if name in on_demand:
            continue
        for key, dep in parsed.requires:
            if dep in on_demand:
                parsed.doc.error(
                    key,
                    f'requires "{dep}", which starts on demand (start = "on-demand" in '
                    f"[policy.{dep}] of app.toml): an eager feature cannot require it; "
                    f'remove it from requires (a call to it starts it), or make "{name}" '
                    "on-demand too",
                )
