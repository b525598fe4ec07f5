"""A live update after its switch: probation, the keep window, and the rollback.

Watches the new version's figures and crashes, keeps the old version frozen, then retires
it or switches back to it. Must not read manifests or check grants; the switch into the
new version is ``_update``'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._supervisor._handle import FeatureHandle, FeatureState
from capsule._supervisor._instance import Instance
from capsule._supervisor._renewal import Renewer
from capsule._supervisor._restart import RestartTracker
from capsule._supervisor._update_state import (
    UpdateReport,
    UpdateRun,
    VersionLog,
    remember,
    stop_version,
)
from capsule._tokens._authority import TokenAuthority
from capsule.errors import CapsuleError

__all__ = ["Aftercare"]

_log = structlog.get_logger("capsule.supervisor")

_TICK: Final = 0.05
"""How often probation looks at the new version's figures (a crash wakes it at once)."""
_FREEZE_WAIT: Final = 2.0


@final
class Aftercare:
    """Watches each update of one app run from its switch until its old version is gone."""

    def __init__(
        self,
        *,
        broker: Broker,
        authority: TokenAuthority,
        audit: AuditLog,
        relaunch: Callable[[FeatureHandle], Awaitable[None]],
        lock: anyio.Lock,
        stop_timeout: float,
        active: dict[str, UpdateRun],
        renewer: Renewer | None = None,
        announce: Callable[[FeatureHandle, str], None] | None = None,
    ) -> None:
        self._renewer = renewer  # told before a freeze and after a thaw
        self._announce = announce  # capsule.service.up, reason ``rolled-back``
        self._broker = broker
        self._authority = authority
        self._audit = audit
        self._relaunch = relaunch  # a cold start of the handle's version (lock held)
        self._lock = lock
        self._stop_timeout = stop_timeout
        self._active = active  # the updates under way, by feature (shared with Updates)
        self.history: VersionLog | None = None

    async def watch(self, update: UpdateRun) -> None:
        """Probation, then the keep window; or a rollback. Ends with the old version gone."""
        try:
            with update.scope:
                await self._watch_probation(update)
        finally:
            with anyio.CancelScope(shield=True):
                if not update.retiring:
                    await self._retire(update)
                self._active.pop(update.handle.name, None)
                update.handle.update = None
                update.done.set()

    async def _watch_probation(self, update: UpdateRun) -> None:
        handle, policy, probation = update.handle, update.policy, update.probation
        assert probation is not None  # noqa: S101 - set at the switch
        forward = update.new_version.manifest.forward_only
        ends = update.switched_at + policy.probation
        while True:
            if not update.frozen and not update.retiring and not update.old.peer.calls:
                if forward:  # it can never take over again: stopped once its calls ended
                    await self._retire(update)
                else:
                    await self._freeze(update)
            instance = handle.instance
            if instance is not None and instance is not update.old:
                probation.watch(instance.peer.stats)
            reason = update.request or probation.verdict()
            if reason is None and handle.state is FeatureState.QUARANTINED:
                reason = f"quarantined during probation (last: {handle.last_exit})"
            if reason is not None:
                if forward and not update.by_hand:
                    await self._stop_forward(update, reason)
                else:
                    await self._roll_back(update, reason)
                return
            if anyio.current_time() >= ends and (update.frozen or update.retiring):
                break
            with anyio.move_on_after(_TICK):
                await update.wake.wait()
        update.audit(self._audit, "update-done", **probation.figures())
        version = update.new_version.manifest  # what an app restart runs from now on
        await remember(
            self.history, handle.name, version.version, str(version.root), event="updated"
        )
        _log.info("update passed probation", feature=handle.name, versions=update.label)
        if forward or update.retiring:
            return
        update.show("keep")
        with anyio.move_on_after(max(0.0, update.switched_at + policy.keep - anyio.current_time())):
            while update.request is None:
                update.wake = anyio.Event()
                await update.wake.wait()
        if update.request is not None:
            await self._roll_back(update, update.request)

    async def _freeze(self, update: UpdateRun) -> None:
        """Freeze the old version for the keep window; without a freezer it is kept idle
        (muted, no calls) instead, and says so once."""
        old = update.old
        update.frozen = True  # tried: frozen, or kept idle
        if old.ended.is_set() or old.cgroup is None:
            return
        if self._renewer is not None:  # its tokens outlast the keep window, view included
            await self._renewer.before_freeze(old, update.policy.keep, _FREEZE_WAIT)
        try:
            await old.freeze(_FREEZE_WAIT)
        except CapsuleError as exc:
            if self._renewer is not None:
                self._renewer.thawed(old)
            _log.warning("old version not frozen, kept idle", feature=old.feature, error=str(exc))

    async def _thaw(self, old: Instance) -> bool:
        """Let the old version run again; False when it cannot (it ended, say)."""
        if old.ended.is_set():
            return False
        try:
            if old.frozen:
                await old.thaw()
        except CapsuleError as exc:
            _log.error("old version did not thaw", feature=old.feature, error=str(exc))
            return False
        if self._renewer is not None:
            self._renewer.thawed(old)  # its tokens back to the usual lifetime
        return not old.ended.is_set()

    async def _roll_back(self, update: UpdateRun, reason: str) -> None:
        """Switch back to the old version: thawed, or started cold if it is gone. Shielded:
        a rollback under way finishes even when the app closes meanwhile."""
        with anyio.CancelScope(shield=True):
            await self._switch_back(update, reason)

    async def _switch_back(self, update: UpdateRun, reason: str) -> None:
        handle, policy = update.handle, update.policy
        handle._hold_calls(policy.queue)
        held_at = anyio.current_time()
        update.show("rolling back")
        new = handle.instance if handle.instance is not update.old else None
        old_version = update.old_version
        update.retiring = True
        handle.wanted = True
        cold = not await self._thaw(update.old)
        handle.manifest, handle.grant = old_version.manifest, old_version.grant
        handle.restarts = RestartTracker(old_version.manifest.restart)
        if not cold:
            self._broker.unmute(update.old.peer)
            update.old.on_end = update.old_on_end
            handle.instance = update.old
            handle.last_error = None
            if self._announce is not None:  # before the state: one ``up``, not ``restarted``
                self._announce(handle, "rolled-back")
            handle._set(FeatureState.RUNNING)
            handle._release()
        if new is not None:
            await stop_version(self._authority, new, self._stop_timeout, drain=policy.drain)
        if cold:
            async with self._lock:
                await self._relaunch(handle)
            handle._release()
        pause = anyio.current_time() - held_at
        figures = {} if update.probation is None else update.probation.figures()
        update.audit(
            self._audit,
            "update-rollback",
            decision="operate" if update.by_hand else "fail",
            reason=reason,
            pause_ms=round(pause * 1000, 3),
            cold=cold,
            **figures,
        )
        _log.warning("update rolled back", feature=handle.name, reason=reason, cold=cold)
        await remember(
            self.history,
            handle.name,
            old_version.manifest.version,
            str(old_version.manifest.root),
            event="rolled-back",
            reason=reason,
        )
        update.report = UpdateReport(
            handle.name,
            "rollback",
            update.new_version.manifest.version,
            old_version.manifest.version,
            steps=(reason, "started the old version again" if cold else "thawed the old version"),
            pause=pause,
            cold=cold,
        )

    async def _stop_forward(self, update: UpdateRun, reason: str) -> None:
        """A forward-only version failed its probation: it is stopped and quarantined, not
        rolled back (its old version could not read what it wrote)."""
        handle = update.handle
        new = handle.instance if handle.instance is not update.old else None
        handle.wanted = False
        handle._set(FeatureState.QUARANTINED)
        handle.last_exit = f"failed its probation: {reason}"
        handle._release()
        if new is not None:
            await stop_version(self._authority, new, self._stop_timeout, drain=update.policy.drain)
        figures = {} if update.probation is None else update.probation.figures()
        update.audit(
            self._audit,
            "update-failed",
            decision="fail",
            reason=f"{reason}; forward_only: quarantined, not rolled back",
            **figures,
        )

    async def _retire(self, update: UpdateRun) -> None:
        """The old version is done with: stopped (killed if frozen), its cgroup and view
        removed by its instance."""
        update.retiring = True
        old = update.old
        if not old.ended.is_set():
            await stop_version(self._authority, old, self._stop_timeout)

    async def retire_now(self, update: UpdateRun) -> None:
        """End a keep window early (a newer update): the old version is retired now."""
        update.scope.cancel()
        await update.done.wait()
