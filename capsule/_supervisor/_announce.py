"""Telling the app when a feature becomes available or unavailable: ``capsule.service.up``
and ``capsule.service.down``, from the changes of each feature's state.

Watches states and publishes through the broker; it changes no state and decides nothing.
Each ``up`` is followed by exactly one ``down`` for the same container run (a feature that
is removed says ``removed`` once, however its container then ends), except that a live
update's switch and rollback say ``up`` again (``updated``, ``rolled-back``) while the
feature is up: its calls were held, never refused.
"""

from __future__ import annotations

from typing import final

import structlog

from capsule._broker._broker import Broker
from capsule._broker._service import SERVICE_DOWN, SERVICE_UP, service_event
from capsule._supervisor._handle import FeatureHandle, FeatureState

__all__ = ["Announcer"]

_log = structlog.get_logger("capsule.supervisor")


@final
class Announcer:
    """Publishes the service events of one app run."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._up: dict[str, FeatureHandle] = {}  # feature -> its handle, while announced up
        self._started: set[str] = set()  # features that have been up once in this run
        self._on_state = self._changed  # one bound method for every handle it watches

    def watch(self, handle: FeatureHandle, *, quiet: bool = False) -> None:
        """Announce ``handle``'s changes from now on; ``quiet`` waits for :meth:`up` to say
        the first ``up`` itself (a plugin is announced once it is recorded as installed)."""
        handle.on_state = None if quiet else self._on_state

    def up(self, handle: FeatureHandle, reason: str) -> None:
        """Announce ``handle`` as available (``reason``: installed, updated ...) and watch it."""
        handle.on_state = self._on_state
        self._announce_up(handle, reason)

    def down(self, handle: FeatureHandle, reason: str) -> None:
        """Announce ``handle`` as unavailable now (if it was up) for ``reason``."""
        if self._up.get(handle.name) is not handle:
            return
        del self._up[handle.name]
        self._publish(SERVICE_DOWN, handle, reason)

    def _announce_up(self, handle: FeatureHandle, reason: str) -> None:
        self._up[handle.name] = handle
        self._started.add(handle.name)
        self._publish(SERVICE_UP, handle, reason)

    def _changed(self, handle: FeatureHandle, previous: FeatureState) -> None:
        state = handle.state
        if state is FeatureState.RUNNING:
            if self._up.get(handle.name) is not handle:
                again = handle.name in self._started
                self._announce_up(handle, "restarted" if again else "started")
        elif previous is FeatureState.RUNNING:
            self.down(handle, _why_down(handle, state))

    def _publish(self, topic: str, handle: FeatureHandle, reason: str) -> None:
        version = handle.manifest.version
        reached = self._broker.announce(topic, service_event(handle.name, version, reason))
        _log.debug("service event", topic=topic, feature=handle.name, reason=reason, to=reached)


def _why_down(handle: FeatureHandle, state: FeatureState) -> str:
    if state is FeatureState.STOPPING:
        return "stopped"
    ended = handle.last_exit or "ended"
    if state is FeatureState.RESTARTING:
        return f"{ended}; restarting"
    if state is FeatureState.QUARANTINED:
        return f"{ended}; quarantined"
    return ended
