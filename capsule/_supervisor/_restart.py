"""Restart intensity and backoff: when a crashed feature comes back, and when it is given up.

Pure arithmetic over timestamps the caller passes in: no clock, no I/O.
"""

from __future__ import annotations

import math
import random

from capsule._manifest._model import RestartPolicy

__all__ = ["RestartTracker"]

_JITTER = random.Random()  # noqa: S311 - jitter, not secrecy


class RestartTracker:
    """Counts one feature's restarts within its policy's window.

    ``next_delay(now)`` records a restart and returns how long to wait before it, or
    None when the feature has restarted ``max_restarts`` times within ``window``
    seconds already and must be quarantined.
    """

    __slots__ = ("_rng", "_times", "policy", "total")  # one per declared feature

    def __init__(self, policy: RestartPolicy, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._times: list[float] = []  # a few entries (max_restarts): no deque needed
        self._rng = rng or _JITTER  # one generator for all: 2.5 KiB of state each otherwise
        self.total = 0

    def recent(self, now: float) -> int:
        horizon = now - self.policy.window
        while self._times and self._times[0] <= horizon:
            del self._times[0]
        return len(self._times)

    def next_delay(self, now: float) -> float | None:
        if self.recent(now) >= self.policy.max_restarts:
            return None
        self._times.append(now)
        self.total += 1
        exponent = len(self._times) - 1
        ceiling = min(self.policy.backoff_max, math.ldexp(self.policy.backoff_initial, exponent))
        # "equal jitter": at least half the backoff, so restarts never bunch up at zero
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def wants_restart(self, *, clean_exit: bool) -> bool:
        """Whether the policy restarts after this exit (``clean_exit``: code 0, not asked to)."""
        if self.policy.policy == "never":
            return False
        if self.policy.policy == "on-failure":
            return not clean_exit
        return True
