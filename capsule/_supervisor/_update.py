"""Live updates of a running feature: make before break and the state handoff, up to the
switch; the facade ``Supervisor.update`` and ``Supervisor.rollback`` delegate to.

The sequence, per feature and one at a time: start the new version beside the old one;
hold new calls; let calls in flight on the old one drain; move the state (opaque bytes);
switch the route and release the held calls. What follows the switch (probation, the keep
window, a rollback) is ``_aftercare``'s. Must not check grants itself (``read_candidate``
does) nor look into the state it moves.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._manifest import App
from capsule._manifest._diff import Candidate, diff_grants, read_candidate
from capsule._manifest._model import UpdatePolicy
from capsule._supervisor._aftercare import Aftercare
from capsule._supervisor._handle import FeatureHandle, FeatureState
from capsule._supervisor._handoff import HandoffError
from capsule._supervisor._instance import Ending, Instance
from capsule._supervisor._plan import Version
from capsule._supervisor._probation import Probation
from capsule._supervisor._renewal import Renewer
from capsule._supervisor._restart import RestartTracker
from capsule._supervisor._update_state import (
    UpdateReport,
    UpdateRun,
    VersionLog,
    drained,
    remember,
    stop_version,
)
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule.errors import CapsuleError, UpdateError

__all__ = ["UpdateReport", "Updates"]

_log = structlog.get_logger("capsule.supervisor")


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
        renewer: Renewer | None = None,
        announce: Callable[[FeatureHandle, str], None] | None = None,
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
        self._active: dict[str, UpdateRun] = {}
        self._closing = False
        self._after = Aftercare(
            broker=broker,
            authority=authority,
            audit=audit,
            relaunch=relaunch,
            lock=lock,
            stop_timeout=stop_timeout,
            active=self._active,
            renewer=renewer,
            announce=announce,
        )
        self._announce = announce  # capsule.service.up: ``updated``, ``rolled-back``
        self.history = history

    @property
    def history(self) -> VersionLog | None:
        """Where versions are recorded (``updated``, ``rolled-back``)."""
        return self._after.history

    @history.setter
    def history(self, log: VersionLog | None) -> None:
        self._after.history = log

    # -- the update -------------------------------------------------------------------

    def status(self, name: str) -> str | None:
        """The update of ``name`` under way, in words (``1.0 -> 1.1 (probation)``), or None."""
        update = self._active.get(name)
        return None if update is None else f"{update.label} ({update.phase})"

    async def update(
        self, handle: FeatureHandle, bundle: Path, *, approve: bool, dry_run: bool
    ) -> UpdateReport:
        """Read ``bundle`` as a new version of ``handle``'s feature, check it against the
        app's policy and the running grant, then (unless ``dry_run``) replace the running
        version by it. ConfigError for a bad bundle, UpdateRefusedError for a request the
        policy does not approve, UpdateError for a widening without ``approve`` or an update
        that did not happen (the old version serves on)."""
        name = handle.name
        candidate = await self._read(bundle, name)
        version = Version(candidate.manifest, candidate.grant)
        diff = diff_grants(
            handle.grant,
            candidate.grant,
            before_limits=handle.manifest.limits,
            after_limits=candidate.manifest.limits,
        )
        policy = self._app.manifest.update_policy(name)
        if dry_run:
            return UpdateReport(
                name,
                "dry-run",
                handle.manifest.version,
                candidate.manifest.version,
                diff=diff.render(),
                widens=diff.widens,
                steps=_plan(handle, version, policy, needs_approval=diff.widens and not approve),
            )
        if diff.widens and not approve:
            raise UpdateError(
                name,
                f"version {candidate.manifest.version} asks for more than "
                f"{handle.manifest.version} holds; approve it to go on "
                f"(approve=True, capsule update --approve):\n{diff.render()}",
            )
        report = await self.run(handle, version, bundle, policy=policy)
        return _with_diff(report, diff.render(), widens=diff.widens)

    async def _read(self, bundle: Path, name: str) -> Candidate:
        """The bundle read and checked against the app (file reads: in a worker thread)."""
        read = functools.partial(read_candidate, self._app, bundle, feature=name)
        return await anyio.to_thread.run_sync(read)

    async def run(
        self, handle: FeatureHandle, version: Version, bundle: Path, *, policy: UpdatePolicy
    ) -> UpdateReport:
        """Replace ``handle``'s running version by ``version`` (its grant already checked and
        approved). Returns once the new version serves; probation goes on in the background.
        UpdateError (the old version serving still) when it cannot."""
        name = handle.name
        current = self._active.get(name)
        if current is not None and current.phase == "keep":
            await self._after.retire_now(current)  # a newer update ends the keep window early
        async with self._lock:  # checked again under it: two updates may race to here
            if self._closing:
                raise UpdateError(name, "the app is shutting down")
            current = self._active.get(name)
            if current is not None:
                raise UpdateError(
                    name,
                    f"an update ({current.label}) is under way, in {current.phase}: wait "
                    "until it ends, or roll it back",
                )
            old = handle.instance
            if handle.state is not FeatureState.RUNNING or old is None or old.ended.is_set():
                return await self._replace_cold(handle, version, bundle)
            update = UpdateRun(handle, old, Version(handle.manifest, handle.grant), version, policy)
            self._active[name] = update
        update.audit(self._audit, "update-start", bundle=str(bundle))
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
        update.scope = anyio.CancelScope()  # the watcher's, cancelled by aclose
        self._tg.start_soon(self._after.watch, update)
        return report

    async def _replace_cold(
        self, handle: FeatureHandle, version: Version, bundle: Path
    ) -> UpdateReport:
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
        await remember(
            self.history, handle.name, version.manifest.version, str(bundle), event="updated"
        )
        return UpdateReport(
            handle.name,
            "update",
            old,
            version.manifest.version,
            steps=(f"it was {state}: it runs {version.manifest.version} when it starts",),
            cold=True,
        )

    async def _make_before_break(self, update: UpdateRun) -> UpdateReport:
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
        await drained(old, policy.drain)
        stragglers = len(old.peer.calls)
        steps.append(
            f"held new calls; {stragglers} call(s) still on the old version after {policy.drain:g}s"
            if stragglers
            else "held new calls; the old version's calls drained"
        )
        update.show("moving state")
        self._check_alive(update)
        moved: int | None = None
        try:
            state = await old.handoff.export_state(policy.state_max, self._start_timeout)
            if state is not None:
                with state:  # the sealed file goes from one container to the other
                    moved = state.size
                    self._check_alive(update)
                    await new.handoff.import_state(
                        update.old_version.manifest.version, state, self._start_timeout
                    )
        except HandoffError as exc:
            raise UpdateError(
                name, f"{exc}; {update.old_version.manifest.version} serves on"
            ) from None
        self._check_alive(update)
        steps.append(
            "no export_state: the new version starts fresh"
            if moved is None
            else f"moved {moved} bytes of state"
        )
        held = handle.held
        self._switch(update, new)
        pause = anyio.current_time() - held_at
        steps.append(f"switched after holding calls {pause * 1000:.1f} ms")
        update.audit(
            self._audit,
            "update-switch",
            pause_ms=round(pause * 1000, 3),
            held=held,
            stragglers=stragglers,
            state_bytes=moved,
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
            state_bytes=moved,
        )

    def _check_alive(self, update: UpdateRun) -> None:
        if update.old.ended.is_set() or update.handle.instance is not update.old:
            raise UpdateError(update.handle.name, "the running version ended during the update")
        new = update.new
        if new is None or new.ended.is_set():
            reason = "" if new is None or new.ending is None else new.ending.reason
            raise UpdateError(
                update.handle.name, f"the new version ended before the switch ({reason})"
            )

    def _switch(self, update: UpdateRun, new: Instance) -> None:
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
        if self._announce is not None:  # before the state: one ``up``, not a ``restarted`` too
            self._announce(handle, "updated")
        handle._set(FeatureState.RUNNING)
        handle._release()
        update.switched_at = anyio.current_time()
        update.show("probation")

    async def _abandon(self, update: UpdateRun, exc: BaseException | None) -> None:
        """The update failed before its switch: the old version serves on, the new one goes."""
        handle = update.handle
        self._active.pop(handle.name, None)
        handle.update = None
        handle._release()
        new = update.new
        if new is not None and handle.instance is not new:
            await stop_version(self._authority, new, self._stop_timeout)
        if exc is None:
            reason = "the app shut down"
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            reason = "its caller was cancelled"
        else:
            reason = str(exc)
        update.audit(self._audit, "update-failed", decision="fail", reason=reason)
        _log.error("update failed", feature=handle.name, reason=reason)
        update.done.set()

    # -- after the switch ---------------------------------------------------------------

    def crashed(self, handle: FeatureHandle, instance: Instance, ending: Ending) -> bool:
        """The running container of ``handle`` ended on its own: True when an update on
        probation takes it from here (as many crashes as its policy tolerates: the calls are
        held and the update rolls back), False to let the restart policy act."""
        update = self._active.get(handle.name)
        if update is None or instance is update.old or update.probation is None:
            return False
        if update.phase == "rolling back":  # the rollback stops it anyway
            return True
        if update.phase != "probation":
            return False
        if not update.probation.crashed():
            return False
        handle._hold_calls(update.policy.queue)
        crashes = update.probation.crashes
        update.ask(f"{crashes} crash(es) during probation (last: {ending.reason})")
        return True

    async def rollback(self, handle: FeatureHandle) -> UpdateReport:
        """Go back to the version before: during an update's probation or keep window, a
        thaw and a switch; after it, a cold start of the previous version in the history.
        UpdateError when there is none, or an update is before its switch."""
        name = handle.name
        if handle.manifest.forward_only:
            raise UpdateError(
                name,
                f"version {handle.manifest.version} is forward_only: it cannot be rolled back "
                "(update it to a newer version instead)",
            )
        update = self._active.get(name)
        if update is None:
            return await self._rollback_cold(handle)
        if update.phase == "rolling back":
            await update.done.wait()
        elif update.phase not in ("probation", "keep"):
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

    async def _rollback_cold(self, handle: FeatureHandle) -> UpdateReport:
        """Stop the running version and start the previous one of the history (nothing of
        the running one is kept but its private storage; calls are held meanwhile)."""
        name = handle.name
        history = self.history
        record = None if history is None else history.previous(name)
        if record is None:
            raise UpdateError(name, "has no previous version in its history to roll back to")
        candidate = await self._read(Path(record.bundle), name)
        policy = self._app.manifest.update_policy(name)
        current = handle.manifest.version
        reason = f"rolled back by hand to {record.version} ({record.bundle})"
        async with self._lock:
            handle._hold_calls(policy.queue)
            held_at = anyio.current_time()
            try:
                running = handle.instance
                if running is not None and not running.ended.is_set():
                    await stop_version(
                        self._authority, running, self._stop_timeout, drain=policy.drain
                    )
                handle.manifest, handle.grant = candidate.manifest, candidate.grant
                handle.restarts = RestartTracker(candidate.manifest.restart)
                await remember(  # first: its start is then no new version to record
                    history, name, record.version, record.bundle, event="rolled-back", reason=reason
                )
                if handle.wanted:
                    await self._relaunch(handle)
            finally:
                handle._release()
        pause = anyio.current_time() - held_at
        self._audit.record(
            "update-rollback",
            feature=name,
            decision="operate",
            reason=reason,
            from_version=current,
            to_version=candidate.manifest.version,
            pause_ms=round(pause * 1000, 3),
            cold=True,
        )
        return UpdateReport(
            name,
            "rollback",
            current,
            candidate.manifest.version,
            steps=(reason, f"stopped {current}, started {candidate.manifest.version}"),
            pause=pause,
            cold=True,
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


def _with_diff(report: UpdateReport, diff: str, *, widens: bool) -> UpdateReport:
    return UpdateReport(
        report.feature,
        report.action,
        report.from_version,
        report.to_version,
        diff=diff,
        widens=widens,
        steps=report.steps,
        pause=report.pause,
        held=report.held,
        stragglers=report.stragglers,
        state_bytes=report.state_bytes,
        cold=report.cold,
    )


def _plan(
    handle: FeatureHandle, version: Version, policy: UpdatePolicy, *, needs_approval: bool
) -> tuple[str, ...]:
    """What an update would do, step by step, in words (a dry run)."""
    old, new = handle.manifest.version, version.manifest.version
    steps = [f"needs approval: it widens what {handle.name} may do"] if needs_approval else []
    if handle.state is not FeatureState.RUNNING:
        return (*steps, f"it is {handle.state.value}: it would run {new} when it starts")
    caps = len(version.grant.capabilities)
    steps += [
        f"start {new} beside {old}, with tokens for its own grant ({caps} capabilities)",
        f"hold new calls (at most {policy.queue}); let calls on {old} finish, up to "
        f"{policy.drain:g}s",
        f"move state: export_state of {old}, import_state of {new} "
        f"(at most {policy.state_max} bytes)",
        f"switch calls to {new}; probation {policy.probation:g}s: roll back after "
        f"{policy.crashes} crash(es), {policy.error_rate:.0%} failed calls (over "
        f"{policy.min_calls}+) or a p99 over {policy.p99_ratio:g} times {old}'s",
    ]
    if version.manifest.forward_only:
        steps.append(f"forward_only: {old} is stopped once its calls end; no rollback")
    else:
        steps.append(f"keep {old} frozen for {policy.keep:g}s (a rollback is a thaw), then stop it")
    return tuple(steps)
