"""One live update as it goes, and what it reports: the record both halves of an update
share (before the switch, ``_update``; after it, ``_aftercare``).

State and small helpers only: it starts, stops and switches nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._manifest._model import UpdatePolicy
from capsule._supervisor._handle import FeatureHandle
from capsule._supervisor._instance import Ending, Instance
from capsule._supervisor._plan import Version
from capsule._supervisor._probation import Probation
from capsule._supervisor._records import UpdateReport
from capsule._tokens._authority import TokenAuthority
from capsule.errors import ConfigError

__all__ = [
    "Phase",
    "UpdateReport",
    "UpdateRun",
    "VersionEntry",
    "VersionLog",
    "drained",
    "remember",
    "revoke_held",
    "stop_version",
]

_log = structlog.get_logger("capsule.supervisor")
_DRAIN_POLL: Final = 0.005
Phase = Literal["starting", "draining", "moving state", "probation", "keep", "rolling back"]


class VersionEntry(Protocol):
    """A version a feature ran, as the history keeps it."""

    @property
    def version(self) -> str: ...

    @property
    def bundle(self) -> str: ...


class VersionLog(Protocol):
    """Where the versions a feature ran are recorded (the supervisor's history)."""

    def record(
        self, feature: str, version: str, bundle: str, event: Any, reason: str = ""
    ) -> object: ...

    def previous(self, feature: str) -> VersionEntry | None: ...


@final
@dataclass(eq=False, slots=True)
class UpdateRun:
    """One update of one feature, from start until its old version is retired."""

    handle: FeatureHandle
    old: Instance
    old_version: Version
    new_version: Version
    policy: UpdatePolicy
    phase: Phase = "starting"
    new: Instance | None = None
    probation: Probation | None = None
    switched_at: float = 0.0
    frozen: bool = False
    retiring: bool = False  # the old version is past use (stopped, or about to be)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    wake: anyio.Event = field(default_factory=anyio.Event)
    request: str | None = None  # why to roll back now (a crash, or by hand)
    by_hand: bool = False
    report: UpdateReport | None = None
    old_on_end: Callable[[Ending], None] | None = None  # the supervisor's, while it served
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def label(self) -> str:
        return f"{self.old_version.manifest.version} -> {self.new_version.manifest.version}"

    def show(self, phase: Phase) -> None:
        self.phase = phase
        self.handle.update = f"{self.label} ({phase})"

    def ask(self, reason: str, *, by_hand: bool = False) -> None:
        """Ask the watcher to roll back (once)."""
        if self.request is None:
            self.request = reason
            self.by_hand = by_hand
        self.wake.set()

    def audit(
        self,
        log: AuditLog,
        event: str,
        *,
        decision: str = "operate",
        reason: str = "",
        **fields: Any,
    ) -> None:
        """One audit line about this update, naming both versions."""
        log.record(
            event,
            feature=self.handle.name,
            decision=decision,
            reason=reason,
            from_version=self.old_version.manifest.version,
            to_version=self.new_version.manifest.version,
            **fields,
        )


async def remember(
    history: VersionLog | None,
    feature: str,
    version: str,
    bundle: str,
    *,
    event: str,
    reason: str = "",
) -> None:
    """Add a record to the version history, in a worker thread (it writes and syncs a
    file); a history that cannot be written is logged, not raised: the update stands."""
    if history is None:
        return
    record = functools.partial(history.record, feature, version, bundle, event, reason)
    try:
        await anyio.to_thread.run_sync(record)
    except (OSError, ConfigError) as exc:
        _log.error("cannot record a version", feature=feature, version=version, error=str(exc))


def revoke_held(authority: TokenAuthority, instance: Instance) -> None:
    """Revoke what ``instance`` holds before it is stopped: it can act no more meanwhile."""
    for token in instance.spec.start.tokens:
        authority.revoke(token)
    for held in list(instance.peer.handles.values()):
        authority.revoke(held.claims)


async def drained(instance: Instance, seconds: float) -> None:
    """Wait until the calls ``instance`` serves have ended, at most ``seconds``."""
    with anyio.move_on_after(seconds):
        while instance.peer.calls and not instance.ended.is_set():  # noqa: ASYNC110 - nothing signals a container's last answer; polled
            await anyio.sleep(_DRAIN_POLL)


async def stop_version(
    authority: TokenAuthority,
    instance: Instance,
    stop_timeout: float,
    *,
    drain: float | None = None,
) -> None:
    """Stop a version's container: its calls drained first for at most ``drain`` seconds
    (when given), then what it holds revoked, then the container stopped."""
    if drain is not None:
        await drained(instance, drain)
    revoke_held(authority, instance)
    await instance.stop(stop_timeout)
