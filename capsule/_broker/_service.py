"""The runtime's own events: ``capsule.service.up`` and ``capsule.service.down``, and the
``capsule.`` topics no feature and no host program may publish on.

Names and payloads only: it delivers nothing itself (the broker does) and decides nothing
about who may subscribe (a token's ``icc:subscribe`` capability does, as for any topic).

The payload of both events is a map ``{"feature": NAME, "version": VERSION, "reason":
WHY}``: ``up`` when a feature becomes available to calls (``started``, ``restarted``,
``installed``), ``down`` when it stops being available (``stopped``, ``removed``, or how its
container ended: ``exited with code 1; restarting``, ``killed by SIGKILL; quarantined``).
"""

from __future__ import annotations

from typing import Final, TypedDict

__all__ = [
    "RESERVED",
    "RUNTIME",
    "SERVICE_DOWN",
    "SERVICE_UP",
    "ServiceEvent",
    "reserved_topic",
    "service_event",
]

RESERVED: Final = "capsule."
"""Topics beneath this prefix are published by capsule alone."""
SERVICE_UP: Final = "capsule.service.up"
SERVICE_DOWN: Final = "capsule.service.down"
RUNTIME: Final = "@capsule"
"""The sender of the runtime's own events (never a feature's name, nor the host's)."""


class ServiceEvent(TypedDict):
    """The payload of ``capsule.service.up`` and ``capsule.service.down``."""

    feature: str
    version: str
    reason: str


def reserved_topic(topic: str) -> bool:
    """Whether ``topic`` is one only capsule publishes on (``capsule.`` and beneath)."""
    return topic.startswith(RESERVED)


def service_event(feature: str, version: str, reason: str) -> ServiceEvent:
    return {"feature": feature, "version": version, "reason": reason}
