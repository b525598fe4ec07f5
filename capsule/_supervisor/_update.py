"""Live updates of a running feature: make before break, state handoff, probation, rollback.

The sequence, per feature and one at a time: start the new version beside the old one;
hold new calls; let calls in flight on the old one drain; move the state (opaque bytes);
switch the route; release the held calls; keep the old version frozen while the new one
is on probation; then retire it, or switch back. Decides when to switch and roll back;
must not check grants or read manifests (``read_candidate`` does), nor decode state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._manifest import App
from capsule._manifest._model import UpdatePolicy
from capsule._supervisor._handle import FeatureHandle, FeatureState
from capsule._supervisor._handoff import HandoffError
from capsule._supervisor._instance import Ending, Instance
from capsule._supervisor._plan import Version
from capsule._supervisor._probation import Probation
from capsule._supervisor._restart import RestartTracker
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule.errors import CapsuleError, UpdateError

__all__ = ["UpdateReport", "Updates", "VersionLog"]

_log = structlog.get_logger("capsule.supervisor")

_TICK: Final = 0.05
"""How often probation looks at the new version's figures (a crash is seen at once)."""
_FREEZE_WAIT: Final = 2.0
_DRAIN_POLL: Final = 0.005
Phase = Literal["starting", "draining", "moving state", "probation", "keep"]


class VersionLog(Protocol):
    """Where the versions a feature ran are recorded (the supervisor's history)."""

    def record(
        self, feature: str, version: str, bundle: str, event: str, reason: str = ""
    ) -> object: ...


@final
@dataclass(frozen=True, slots=True)
class UpdateReport:
    """What an update or a rollback did, or for a dry run what an update would do.

    ``pause`` is how long new calls were held (seconds), ``held`` how many were,
    ``stragglers`` the calls still running on the old version when the drain time was up
    (they finish there), ``state_bytes`` the size of the state moved (None: the old version
    has no ``export_state``). ``steps`` says in words what happened, or would.
    """

    feature: str
    action: Literal["update", "rollback", "dry-run"]
    from_version: str
    to_version: str
    diff: str = ""
    widens: bool = False
    steps: tuple[str, ...] = ()
    pause: float = 0.0
    held: int = 0
    stragglers: int = 0
    state_bytes: int | None = None
    cold: bool = False  # no old container to switch to: stopped, then started


@dataclass(eq=False, slots=True)
class _Update:
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


@final
class Updates:
    """The live updates of one app run (at most one per feature at a time)."""

    def __init__(
        self,
        app: App,
        *,
        broker: Broker,
        authority: TokenAuthority,
        audit: AuditLog,
        services: Services,
        launch: Callable[[FeatureHandle, Version], Awaitable[tuple[Instance, list[Token]]]],
        adopt: Callable[[FeatureHandle, Instance, list[Token]], None],
        relaunch: Callable[[FeatureHandle], Awaitable[None]],
        lock: anyio.Lock,
        stop_timeout: float,
        start_timeout: float,
        history: VersionLog | None = None,
    ) -> None:
        self._app = app
        self._broker = broker
        self._authority = authority
        self._audit = audit
        self._tg = services
        self._launch = launch  # a new container of a version, beside the running one
        self._adopt = adopt  # the supervisor watches it from now on (exit, renewal)
        self._relaunch = relaunch  # a cold start of the handle's version (lock held)
        self._lock = lock
        self._stop_timeout = stop_timeout
        self._start_timeout = start_timeout
        self.history = history
        self._active: dict[str, _Update] = {}
        self._closing = False

    # -- the update -------------------------------------------------------------------

    def busy(self, name: str) -> bool:
        return name in self._active

    async def run(
        self, handle: FeatureHandle, version: Version, bundle: Path, *, policy: UpdatePolicy
    ) -> UpdateReport:
        """Replace ``handle``'s running version by ``version`` (its grant already checked and
        approved). Returns once the new version serves; probation goes on in the background.
        UpdateError (the old version serving still) when it cannot."""
        name = handle.name
        if self._closing:
            raise UpdateError(name, "the app is shutting down")
        current = self._active.get(name)
        if current is not None and current.phase == "keep":
            await self._retire_now(current)  # a newer update ends the keep window early
        elif current is not None:
            raise UpdateError(
                name,
                f"an update ({current.label}) is under way, in {current.phase}: wait until "
                "it ends, or roll it back",
            )
        async with self._lock:
            old = handle.instance
            if handle.state is not FeatureState.RUNNING or old is None or old.ended.is_set():
                return self._replace_cold(handle, version, bundle)
            update = _Update(handle, old, Version(handle.manifest, handle.grant), version, policy)
            self._active[name] = update
        self._record("update-start", update, bundle=str(bundle))
        try:
            with update.scope:
                report = await self._make_before_break(update)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._abandon(update, exc)
            raise
        if update.scope.cancelled_caught:  # the app is closing: _abandon undid it
            with anyio.CancelScope(shield=True):
                await self._abandon(update, None)
            raise UpdateError(name, "the app shut down during the update; nothing changed")
        history = self.history
        if history is not None:
            history.record(name, version.manifest.version, str(bundle), "updated")
        update.scope = anyio.CancelScope()  # the watcher's, cancelled by aclose
        self._tg.start_soon(self._watch, update)
        return report

    def _replace_cold(self, handle: FeatureHandle, version: Version, bundle: Path) -> UpdateReport:
        """The feature runs no container: the new version is what it runs from now on. A
        stopped feature stays stopped; a restarting one restarts as the new version."""
        old = handle.manifest.version
        handle.manifest, handle.grant = version.manifest, version.grant
        handle.restarts = RestartTracker(version.manifest.restart)
        state = handle.state.value
        self._audit.record(
            "update-done",
            feature=handle.name,
            decision="operate",
            reason=f"{old} -> {version.manifest.version}: it was {state}, nothing to switch",
            cold=True,
        )
        if self.history is not None:
            self.history.record(handle.name, version.manifest.version, str(bundle), "updated")
        return UpdateReport(
            handle.name,
            "update",
            old,
            version.manifest.version,
            steps=(f"it was {state}: it runs {version.manifest.version} when it starts",),
            cold=True,
        )

    async def _make_before_break(self, update: _Update) -> UpdateReport:
        handle, old, policy = update.handle, update.old, update.policy
        name = handle.name
        steps: list[str] = []
        handle.generation += 1
        try:
            new, tokens = await self._launch(handle, update.new_version)
        except (CapsuleError, OSError) as exc:
            raise UpdateError(
                name,
                f"the new version did not start, {update.old_version.manifest.version} "
                f"serves on: {exc}",
            ) from exc
        update.new = new
        self._adopt(handle, new, tokens)
        steps.append(f"started {update.new_version.manifest.version} (pid {new.pid})")
        update.show("draining")
        handle._hold_calls(policy.queue)
        held_at = anyio.current_time()
        await _drained(old, policy.drain)
        stragglers = len(old.peer.calls)
        steps.append(
            f"held new calls; {stragglers} call(s) still on the old version after {policy.drain:g}s"
            if stragglers
            else "held new calls; the old version's calls drained"
        )
        update.show("moving state")
        self._check_alive(update)
        try:
            data = await old.handoff.export_state(policy.state_max, self._start_timeout)
            self._check_alive(update)
            if data is not None:
                await new.handoff.import_state(
                    update.old_version.manifest.version, data, self._start_timeout
                )
        except HandoffError as exc:
            raise UpdateError(
                name, f"{exc}; {update.old_version.manifest.version} serves on"
            ) from None
        self._check_alive(update)
        steps.append(
            "no export_state: the new version starts fresh"
            if data is None
            else f"moved {len(data)} bytes of state"
        )
        held = handle.held
        self._switch(update, new)
        pause = anyio.current_time() - held_at
        steps.append(f"switched after holding calls {pause * 1000:.1f} ms")
        self._record(
            "update-switch",
            update,
            pause_ms=round(pause * 1000, 3),
            held=held,
            stragglers=stragglers,
            state_bytes=None if data is None else len(data),
        )
        return UpdateReport(
            name,
            "update",
            update.old_version.manifest.version,
            update.new_version.manifest.version,
            steps=tuple(steps),
            pause=pause,
            held=held,
            stragglers=stragglers,
            state_bytes=None if data is None else len(data),
        )

    def _check_alive(self, update: _Update) -> None:
        if update.old.ended.is_set() or update.handle.instance is not update.old:
            raise UpdateError(update.handle.name, "the running version ended during the update")
        new = update.new
        if new is None or new.ended.is_set():
            reason = "" if new is None or new.ending is None else new.ending.reason
            raise UpdateError(
                update.handle.name, f"the new version ended before the switch ({reason})"
            )

    def _switch(self, update: _Update, new: Instance) -> None:
        """Point the handle at the new version and let the held calls go (no await: atomic)."""
        handle = update.handle
        old_stats = update.old.peer.stats
        update.probation = Probation(update.policy, old_stats.p99())
        update.probation.watch(new.peer.stats)
        self._broker.mute(update.old.peer)
        update.old_on_end, update.old.on_end = update.old.on_end, None  # no restart, no report
        handle.instance = new
        handle.manifest, handle.grant = update.new_version.manifest, update.new_version.grant
        handle.restarts = RestartTracker(update.new_version.manifest.restart)
        handle.last_error = None
        handle._set(FeatureState.RUNNING)
        handle._release()
        update.switched_at = anyio.current_time()
        update.show("probation")

    async def _abandon(self, update: _Update, exc: BaseException | None) -> None:
        """The update failed before its switch: the old version serves on, the new one goes."""
        handle = update.handle
        self._active.pop(handle.name, None)
        handle.update = None
        handle._release()
        new = update.new
        if new is not None and handle.instance is not new:
            self._revoke(new)
            await new.stop(self._stop_timeout)
        reason = "cancelled" if exc is None else str(exc)
        self._record("update-failed", update, decision="fail", reason=reason)
        _log.error("update failed", feature=handle.name, reason=reason)
        update.done.set()

    # -- after the switch ---------------------------------------------------------------

    def crashed(self, handle: FeatureHandle, instance: Instance, ending: Ending) -> bool:
        """The running container of ``handle`` ended on its own: True when an update on
        probation takes it from here (as many crashes as its policy tolerates: the calls are
        held and the update rolls back), False to let the restart policy act."""
        update = self._active.get(handle.name)
        if update is None or update.phase != "probation" or update.probation is None:
            return False
        if instance is update.old:
            return False
        if not update.probation.crashed():
            return False
        handle._hold_calls(update.policy.queue)
        crashes = update.probation.crashes
        update.ask(f"{crashes} crash(es) during probation (last: {ending.reason})")
        return True

    async def rollback(self, name: str) -> UpdateReport | None:
        """Roll back the update of ``name`` on probation or in its keep window (a thaw and a
        switch); None when there is none to roll back that way."""
        update = self._active.get(name)
        if update is None:
            return None
        if update.phase not in ("probation", "keep"):
            raise UpdateError(name, f"an update ({update.label}) is in {update.phase}: wait")
        update.ask("rolled back by hand", by_hand=True)
        await update.done.wait()
        if update.report is None:
            raise UpdateError(name, "the update ended before it could be rolled back")
        return update.report

    async def wait_settled(self, name: str) -> None:
        """Wait until no update of ``name`` is under way (probation and keep included)."""
        update = self._active.get(name)
        if update is not None:
            await update.done.wait()

    async def _watch(self, update: _Update) -> None:
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

    async def _watch_probation(self, update: _Update) -> None:
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
        self._record("update-done", update, **probation.figures())
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

    async def _freeze(self, update: _Update) -> None:
        """Freeze the old version for the keep window; without a freezer it is kept idle
        (muted, no calls) instead, and says so once."""
        old = update.old
        update.frozen = True  # tried: frozen, or kept idle
        if old.ended.is_set() or old.cgroup is None:
            return
        try:
            await old.freeze(_FREEZE_WAIT)
        except CapsuleError as exc:
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
        return not old.ended.is_set()

    async def _roll_back(self, update: _Update, reason: str) -> None:
        """Switch back to the old version: thawed, or started cold if it is gone."""
        handle, policy = update.handle, update.policy
        handle._hold_calls(policy.queue)
        held_at = anyio.current_time()
        new = handle.instance if handle.instance is not update.old else None
        old_version = update.old_version
        handle.manifest, handle.grant = old_version.manifest, old_version.grant
        handle.restarts = RestartTracker(old_version.manifest.restart)
        update.retiring = True
        handle.wanted = True
        cold = not await self._thaw(update.old)
        if not cold:
            self._broker.unmute(update.old.peer)
            update.old.on_end = update.old_on_end
            handle.instance = update.old
            handle.last_error = None
            handle._set(FeatureState.RUNNING)
            handle._release()
        if new is not None:
            await self._drain_and_stop(new, policy.drain)
        if cold:
            async with self._lock:
                await self._relaunch(handle)
            handle._release()
        pause = anyio.current_time() - held_at
        figures = {} if update.probation is None else update.probation.figures()
        self._record(
            "update-rollback",
            update,
            decision="operate" if update.by_hand else "fail",
            reason=reason,
            pause_ms=round(pause * 1000, 3),
            cold=cold,
            **figures,
        )
        _log.warning("update rolled back", feature=handle.name, reason=reason, cold=cold)
        if self.history is not None:
            self.history.record(
                handle.name,
                old_version.manifest.version,
                str(old_version.manifest.root),
                "rolled-back",
                reason,
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

    async def _stop_forward(self, update: _Update, reason: str) -> None:
        """A forward-only version failed its probation: it is stopped and quarantined, not
        rolled back (its old version could not read what it wrote)."""
        handle = update.handle
        new = handle.instance if handle.instance is not update.old else None
        handle.wanted = False
        handle._set(FeatureState.QUARANTINED)
        handle.last_exit = f"failed its probation: {reason}"
        handle._release()
        if new is not None:
            await self._drain_and_stop(new, update.policy.drain)
        figures = {} if update.probation is None else update.probation.figures()
        self._record(
            "update-failed",
            update,
            decision="fail",
            reason=f"{reason}; forward_only: quarantined, not rolled back",
            **figures,
        )

    async def _drain_and_stop(self, instance: Instance, drain: float) -> None:
        await _drained(instance, drain)
        self._revoke(instance)
        await instance.stop(self._stop_timeout)

    async def _retire(self, update: _Update) -> None:
        """The old version is done with: stopped (killed if frozen), its cgroup and view
        removed by its instance."""
        update.retiring = True
        old = update.old
        if not old.ended.is_set():
            self._revoke(old)
            await old.stop(self._stop_timeout)

    async def _retire_now(self, update: _Update) -> None:
        """End a keep window early (a newer update): the old version is retired now."""
        update.scope.cancel()
        await update.done.wait()

    def _revoke(self, instance: Instance) -> None:
        """Revoke what ``instance`` holds before it is stopped: it can act no more meanwhile."""
        for token in instance.spec.start.tokens:
            self._authority.revoke(token)
        for held in list(instance.peer.handles.values()):
            self._authority.revoke(held.claims)

    def _record(
        self,
        event: str,
        update: _Update,
        *,
        decision: str = "operate",
        reason: str = "",
        **fields: Any,
    ) -> None:
        self._audit.record(
            event,
            feature=update.handle.name,
            decision=decision,
            reason=reason,
            from_version=update.old_version.manifest.version,
            to_version=update.new_version.manifest.version,
            **fields,
        )

    # -- shutting down ------------------------------------------------------------------

    async def aclose(self) -> None:
        """End every update: one before its switch is undone, one after it keeps the new
        version and retires the old one. Returns once no extra container is left."""
        self._closing = True
        for update in list(self._active.values()):
            update.scope.cancel()
        for update in list(self._active.values()):
            await update.done.wait()


async def _drained(instance: Instance, seconds: float) -> None:
    """Wait until the calls ``instance`` serves have ended, at most ``seconds``."""
    with anyio.move_on_after(seconds):
        while instance.peer.calls and not instance.ended.is_set():  # noqa: ASYNC110 - nothing signals a container's last answer; polled
            await anyio.sleep(_DRAIN_POLL)
