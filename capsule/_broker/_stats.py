"""What the calls a container served came to: how many, how many failed, how long they took.

Counting only: cheap enough for every call (a few additions and a slot in a ring of
recent latencies); it judges nothing (a live update's probation does). A container that
just took over a route settles first: the latencies of the calls that queued up in it
meanwhile are not kept (they measure the switch, not the container).
"""

from __future__ import annotations

import math
from array import array
from typing import Final, final

import anyio

__all__ = ["SAMPLES", "CallStats"]

SAMPLES: Final = 1024
"""The latencies kept per container: the most recent ones."""

MAX_WAVES: Final = 16
"""Waves of calls a settling container is given at most before its latencies count."""

SETTLE_MIN: Final = 0.25
"""Seconds a container settles at least: one that spent its CPU quota catching up is
throttled until the quota's period (100 ms by default) ends, then catches up again."""


@final
class CallStats:
    """Calls one container answered: counts, and the latencies of the last SAMPLES calls."""

    __slots__ = ("_latencies", "_next", "_settling", "calls", "failures", "settled")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0  # the handler raised, timed out, or the container ended meanwhile
        self.settled = 0  # calls whose latency was left out while the container settled
        self._latencies = array("d")
        self._next = 0
        self._settling: _Waves | None = None

    def settle(self) -> None:
        """The container takes over a route now, and the calls held meanwhile reach it at
        once: keep no latency of a call that queues up behind that backlog until it has
        drained (see :class:`_Waves`). Failures count all along."""
        self._settling = _Waves(anyio.current_time() + SETTLE_MIN)

    def sent(self) -> int:
        """A call is sent to the container: the mark :meth:`record` gets back with it."""
        waves = self._settling
        return 0 if waves is None else waves.sent()

    def record(self, seconds: float | None, *, failed: bool, mark: int = 0) -> None:
        """One call ended; ``seconds`` it took (None for a stream: its length says nothing);
        ``mark`` is what :meth:`sent` said when it was sent."""
        self.calls += 1
        self.failures += failed
        waves = self._settling
        if waves is not None:
            if mark and not waves.alone(mark):
                self.settled += 1
                seconds = None
            if waves.answered(mark):
                self._settling = None
        if seconds is None:
            return
        if len(self._latencies) < SAMPLES:
            self._latencies.append(seconds)
        else:
            self._latencies[self._next] = seconds
            self._next = (self._next + 1) % SAMPLES

    @property
    def samples(self) -> int:
        return len(self._latencies)

    def p99(self) -> float | None:
        """The 99th percentile of the kept latencies (seconds), or None without any."""
        return self.percentile(0.99)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) of the kept latencies (seconds), or None."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def latencies(self) -> list[float]:
        """The kept latencies (seconds), in no particular order."""
        return list(self._latencies)

    def error_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


@final
class _Waves:
    """How a backlog drains from a container that just took over: in waves.

    The first wave is what it is sent before it answers any call (the backlog released at
    once); each next wave is what it is sent while the one before is answered (the calls
    that queued up behind it). A draining backlog makes ever smaller waves; the container
    has settled when a wave is no smaller than the one before it (it keeps up: what it
    serves now is its steady state, fast or slow), when nothing queued behind a wave, or
    after :data:`MAX_WAVES` waves; and no sooner than :data:`SETTLE_MIN` after the switch.
    """

    __slots__ = ("_answering", "_open", "_sizes", "_until")

    def __init__(self, until: float) -> None:
        self._until = until  # settled no sooner (the CPU quota's throttling after a burst)
        self._sizes = [0, 0]  # calls sent per wave (0: none); the last one takes the sends
        self._open = [0, 0]  # of which still unanswered
        self._answering = 0  # the wave being answered (0: none answered yet)

    def sent(self) -> int:
        wave = len(self._sizes) - 1
        self._sizes[wave] += 1
        self._open[wave] += 1
        return wave

    def alone(self, mark: int) -> bool:
        """Whether a call of wave ``mark`` was the only call of the first wave: sent to a
        container with nothing to catch up on, it queued behind nothing (a quiet feature
        is judged on every call)."""
        return mark == 1 and self._sizes[1] == 1

    def answered(self, mark: int) -> bool:
        """A call ended (``mark``: its wave, or 0); True once the container has settled."""
        if mark:
            self._open[mark] -= 1
        if self._answering == 0:  # the first answer: the first wave is all sent
            self._next_wave()
        sizes, open_ = self._sizes, self._open
        while open_[self._answering] <= 0:
            answered, behind = sizes[self._answering], sizes[-1]
            if behind == 0 or behind >= answered or len(sizes) > MAX_WAVES:
                return anyio.current_time() >= self._until
            self._next_wave()
        return False

    def _next_wave(self) -> None:
        self._answering = len(self._sizes) - 1
        self._sizes.append(0)
        self._open.append(0)
