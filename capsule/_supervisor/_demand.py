"""What the supervisor keeps of one on-demand feature: its policy, how it woke, the events
held for it and the state it carried across an idle stop.

Plain records: no I/O, no timers, and the carried state is opaque bytes it never decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

import anyio
import msgspec

from capsule._manifest._model import StartPolicy

__all__ = ["HELD_EVENTS", "HELD_EVENT_BYTES", "Demand", "HeldEvent"]

HELD_EVENTS: Final = 64
"""Events held for an on-demand feature while it starts; past it they are counted and dropped."""
HELD_EVENT_BYTES: Final = 1 << 20
"""And the bytes of their payloads, all together."""


@final
class HeldEvent(msgspec.Struct, frozen=True):
    """An event that woke a stopped feature (or came while it started), kept for it."""

    topic: str
    payload: msgspec.Raw
    sender: str


@final
class Demand:
    """One on-demand feature as the supervisor tracks it between its containers."""

    __slots__ = (
        "events",
        "events_bytes",
        "events_dropped",
        "idle_since",
        "last_wake",
        "policy",
        "starting",
        "state",
        "state_version",
        "time_to_ready",
        "wake",
        "wakes",
        "woken_at",
    )

    def __init__(self, policy: StartPolicy, wake: Callable[[Any, str], None]) -> None:
        self.policy = policy
        #: ``wake(handle, caller)`` wakes it for a caller whose request the broker authorized
        #: (raises OverloadedError past the caller's wake rate); its handle calls it for a
        #: call to it while stopped. One function shared by every feature of the app.
        self.wake = wake
        self.wakes = 0
        self.last_wake: float | None = None  # Unix time of the last wake
        self.woken_at: float | None = None  # event-loop time the running wake began
        self.time_to_ready: float | None = None  # seconds from the last wake to ready
        self.idle_since: float | None = None  # event-loop time it last became idle
        self.events: list[HeldEvent] = []  # a list: most features never hold one
        self.events_bytes = 0
        self.events_dropped = 0  # events to it while stopped that no wake_on matched, or past
        #: what its export_state returned at its last idle stop, for its next import_state
        self.state: bytes | None = None
        self.starting: anyio.Event | None = None  # set once the start under way is done
        self.state_version = ""

    def hold(self, event: HeldEvent) -> bool:
        """Keep an event for the container being started; False (and counted) when full."""
        size = len(event.payload)
        if len(self.events) >= HELD_EVENTS or self.events_bytes + size > HELD_EVENT_BYTES:
            self.events_dropped += 1
            return False
        self.events.append(event)
        self.events_bytes += size
        return True

    def take_events(self) -> list[HeldEvent]:
        events, self.events = self.events, []
        self.events_bytes = 0
        return events

    def idle_left(self, now: float) -> float | None:
        """Seconds until it is stopped if nothing happens (None: not idle, or never)."""
        idle = self.policy.idle_stop
        if idle is None or self.idle_since is None:
            return None
        return max(0.0, idle - (now - self.idle_since))
