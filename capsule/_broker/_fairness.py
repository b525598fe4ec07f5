"""Fair turns on the broker's event loop: how much one connection may dispatch before the
others get the loop, and how long a connection that floods it waits while others are active.

Decides only when a read loop may go on; it reads, decodes, authorizes and routes nothing.

Every connection's read loop dispatches in *turns*. A turn ends after ``TURN_FRAMES``
frames or ``TURN_NS`` of dispatching, whichever comes first, and the loop then yields so
every other connection with something to read gets a turn too (round robin, as trio runs
each ready task once per batch). A connection that ends ``FLOOD_TURNS`` turns in a row with
its budget spent (frames still buffered: it writes faster than the broker dispatches) is
*flooding*; while another connection was active in the last ``ACTIVE_NS``, a flooding one
waits as long as its last turn took before its next, so it holds at most half of the loop.
It is not read meanwhile: its socket fills and its own sends block, which paces it and
the containers its messages go to, and nobody else. A connection alone on the loop is
never made to wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, final

import anyio
import anyio.lowlevel

__all__ = ["ACTIVE_NS", "FLOOD_TURNS", "TURN_FRAMES", "TURN_NS", "Share", "Turns"]

TURN_FRAMES: Final = 16
"""Frames one connection may dispatch before every other connection gets a turn."""
TURN_NS: Final = 200_000
"""Nanoseconds of dispatching one connection may take before the others get a turn (an
expensive frame, fanned out to many subscribers, counts for what it cost)."""
FLOOD_TURNS: Final = 8
"""Turns in a row ended with the budget spent, past which a connection is flooding."""
ACTIVE_NS: Final = 20_000_000
"""How recently another connection must have dispatched for a flooding one to wait."""
PACE: Final = 1.0
"""A flooding connection waits this many times as long as its last turn took, while
others are active: it holds at most 1 / (1 + PACE) of the loop."""


@final
class Turns:
    """The turns of every connection of one broker: who was active last, and when.

    Keeps the two most recent distinct connections, so "was anyone else active lately"
    is answered in constant time however many connections there are.
    """

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.clock = clock
        self._last: Share | None = None
        self._last_ns = 0
        self._before_ns = 0  # the latest turn of a connection other than ``_last``
        #: turns a flooding connection was made to wait (statistics, tests)
        self.paced = 0

    def share(self) -> Share:
        """A new connection's share of the loop."""
        return Share(self)

    def _began(self, share: Share, now: int) -> None:
        if share is not self._last:
            self._before_ns = self._last_ns
            self._last = share
        self._last_ns = now

    def others_active(self, share: Share, now: int) -> bool:
        """Whether a connection other than ``share`` began a turn in the last ACTIVE_NS."""
        latest = self._before_ns if share is self._last else self._last_ns
        return latest != 0 and now - latest <= ACTIVE_NS


@final
class Share:
    """One connection's turns. ``begin`` before dispatching (it starts a turn unless one is
    under way), ``spent`` after each frame; then ``end`` when the budget ran out, or
    ``rest`` when the connection had to wait for its socket (that ended the turn)."""

    __slots__ = ("_clock", "_frames", "_start", "_turns", "flooding")

    def __init__(self, turns: Turns) -> None:
        self._turns = turns
        self._clock = turns.clock
        self._start = 0  # 0: no turn under way
        self._frames = 0
        #: turns in a row that ended with the budget spent
        self.flooding = 0

    def begin(self) -> None:
        if self._start:
            return
        self._start = self._clock()
        self._frames = 0
        self._turns._began(self, self._start)

    def spent(self) -> bool:
        """Count one dispatched frame; True once this turn's budget is used."""
        self._frames += 1
        return self._frames >= TURN_FRAMES or self._clock() - self._start >= TURN_NS

    def rest(self) -> None:
        """The connection waited for its socket: its turn ended, and it is not flooding."""
        self._start = 0
        self.flooding = 0

    async def end(self) -> None:
        """The budget ran out with frames still to read: let the others have the loop
        (after a pause as long as this turn, when it floods and others are active)."""
        start, self._start = self._start, 0
        self.flooding += 1
        now = self._clock()
        if self.flooding >= FLOOD_TURNS and self._turns.others_active(self, now):
            self._turns.paced += 1
            await anyio.sleep(PACE * (now - start) / 1e9)
        else:
            await anyio.lowlevel.checkpoint()
