"""RestartTracker: restart intensity, backoff with jitter, window expiry, restart policies.

Pure arithmetic: every test passes explicit ``now`` values and, where the jitter
matters, a random source that answers fixed fractions of the range.
"""

from __future__ import annotations

import random

import pytest

from capsule import RestartPolicy
from capsule._supervisor._restart import RestartTracker


class _Fraction(random.Random):
    """A random source whose ``uniform(a, b)`` is always ``a + fraction * (b - a)``."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + self.fraction * (b - a)


def _policy(**changes: object) -> RestartPolicy:
    values: dict[str, object] = {
        "policy": "always",
        "max_restarts": 10,
        "window": 60.0,
        "backoff_initial": 0.1,
        "backoff_max": 1.0,
    }
    values.update(changes)
    return RestartPolicy(**values)  # type: ignore[arg-type]


def _delays(tracker: RestartTracker, times: list[float]) -> list[float | None]:
    return [tracker.next_delay(now) for now in times]


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (1.0, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]),
        (0.0, [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5]),
        (0.5, [0.075, 0.15, 0.3, 0.6, 0.75, 0.75, 0.75]),
    ],
)
def test_backoff_doubles_from_initial_and_is_capped_at_max(
    fraction: float, expected: list[float]
) -> None:
    tracker = RestartTracker(_policy(), rng=_Fraction(fraction))
    delays = _delays(tracker, [float(t) for t in range(len(expected))])
    assert delays == pytest.approx(expected)
    assert tracker.total == len(expected)


@pytest.mark.parametrize("seed", range(20))
def test_every_delay_is_between_half_and_all_of_its_ceiling(seed: int) -> None:
    policy = _policy(max_restarts=8, backoff_initial=0.01, backoff_max=0.5)
    tracker = RestartTracker(policy, rng=random.Random(seed))  # noqa: S311 - jitter under test
    for restart in range(8):
        ceiling = min(0.5, 0.01 * 2**restart)
        delay = tracker.next_delay(restart * 0.1)
        assert delay is not None
        assert ceiling / 2 <= delay <= ceiling, (restart, delay, ceiling)


def test_jitter_spreads_delays_across_the_upper_half() -> None:
    """Equal jitter: restarts of many features do not all land on the same instant."""
    seen = set()
    for seed in range(50):
        tracker = RestartTracker(_policy(), rng=random.Random(seed))  # noqa: S311 - jitter under test
        delay = tracker.next_delay(0.0)
        assert delay is not None
        seen.add(round(delay, 4))
    assert len(seen) > 25
    assert min(seen) < 0.07
    assert max(seen) > 0.08


def test_quarantine_after_max_restarts_within_the_window() -> None:
    tracker = RestartTracker(_policy(max_restarts=3, window=60.0), rng=_Fraction(1.0))
    assert _delays(tracker, [0.0, 1.0, 2.0]) == pytest.approx([0.1, 0.2, 0.4])
    assert tracker.recent(2.0) == 3
    # the fourth failure within 60 s is given up on, and giving up records no restart
    assert tracker.next_delay(3.0) is None
    assert tracker.next_delay(59.9) is None
    assert tracker.total == 3
    assert tracker.recent(59.9) == 3


def test_restarts_leave_the_window_one_by_one() -> None:
    tracker = RestartTracker(_policy(max_restarts=3, window=60.0), rng=_Fraction(1.0))
    _delays(tracker, [0.0, 10.0, 20.0])
    assert tracker.next_delay(59.0) is None
    # at 60 s the restart at 0 s has left the window: one more is allowed, with the
    # backoff of the third restart in the window (two remain from 10 s and 20 s)
    assert tracker.recent(60.0) == 2
    assert tracker.next_delay(60.0) == pytest.approx(0.4)
    assert tracker.next_delay(65.0) is None
    assert tracker.total == 4


def test_window_expiry_resets_the_backoff() -> None:
    tracker = RestartTracker(_policy(max_restarts=5, window=30.0), rng=_Fraction(1.0))
    assert _delays(tracker, [0.0, 1.0, 2.0, 3.0]) == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert tracker.recent(100.0) == 0
    assert tracker.next_delay(100.0) == pytest.approx(0.1)
    assert tracker.next_delay(101.0) == pytest.approx(0.2)
    assert tracker.total == 6


def test_a_quarantined_tracker_recovers_once_the_window_has_passed() -> None:
    tracker = RestartTracker(_policy(max_restarts=2, window=5.0), rng=_Fraction(0.0))
    assert _delays(tracker, [0.0, 0.5, 1.0]) == pytest.approx([0.05, 0.1, None])
    assert tracker.next_delay(6.0) == pytest.approx(0.05)


def test_zero_max_restarts_quarantines_at_the_first_failure() -> None:
    tracker = RestartTracker(_policy(max_restarts=0))
    assert tracker.next_delay(0.0) is None
    assert tracker.total == 0


@pytest.mark.parametrize(
    ("policy", "clean_exit", "restarts"),
    [
        ("always", True, True),
        ("always", False, True),
        ("on-failure", True, False),
        ("on-failure", False, True),
        ("never", True, False),
        ("never", False, False),
    ],
)
def test_restart_policy_decides_by_how_the_container_ended(
    policy: str, clean_exit: bool, restarts: bool
) -> None:
    tracker = RestartTracker(_policy(policy=policy))
    assert tracker.wants_restart(clean_exit=clean_exit) is restarts
