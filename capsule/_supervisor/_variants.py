"""A/B variants: other versions of a running feature beside it, each in its own container,
the broker splitting the feature's calls between them; measured, guarded, promoted or
aborted. The facade's ``set_variants``, ``variants``, ``promote_variant`` and
``abort_variants`` delegate here.

The running version is the control: the feature's own container, under its restart
policy. Each candidate is a full container of its own version, with its own tokens,
cgroup and view (and its own private storage unless the policy shares it). The guards are
a live update's probation, run per candidate against the control. Must not decide per
call where a call goes (``capsule._broker._variants`` does, from the table built here).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import final

import anyio
import msgspec
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._broker._bucketing import KeyRule, first_split, new_salt, parse_sticky, ramp
from capsule._broker._bucketing import shares_to_buckets as _counts
from capsule._broker._routes import ShadowMark
from capsule._broker._variants import VariantRoutes
from capsule._manifest import App
from capsule._manifest._diff import diff_grants, read_candidate
from capsule._manifest._model import UpdatePolicy
from capsule._supervisor._handle import FeatureHandle, FeatureState
from capsule._supervisor._instance import Ending, Instance
from capsule._supervisor._plan import Version
from capsule._supervisor._probation import Probation
from capsule._supervisor._update import UpdateReport, Updates
from capsule._supervisor._update_state import stop_version
from capsule._supervisor._variant_stats import (
    Tally,
    VariantsStatus,
    latency_diff,
    rate_diff,
    variant_row,
)
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule.errors import CapsuleError, ConfigError, UpdateError

__all__ = ["Variants", "VariantsStatus"]

_log = structlog.get_logger("capsule.supervisor")
_TICK = 0.05  # how often the guards look at the figures (seconds)

Launch = Callable[[FeatureHandle, Version], Awaitable[tuple[Instance, list[Token]]]]


@final
class _Candidate:
    """One version run beside the control: its containers (one at a time) and its guard."""

    def __init__(
        self, version: Version, bundle: Path, index: int, policy: UpdatePolicy, storage: Path | None
    ) -> None:
        self.version = version
        self.bundle = bundle
        self.index = index  # in the split
        self.storage = storage  # its own private storage, removed with it; None: shared
        self.instance: Instance | None = None
        self.probation = Probation(policy, None)
        self.state = "starting"
        self.mark = ShadowMark(version.manifest.version)  # what it was kept from, as a shadow

    @property
    def name(self) -> str:
        return self.version.manifest.version


@final
class _Experiment:
    """The variants of one feature, from the first ``set_variants`` to promotion or abort."""

    def __init__(
        self,
        handle: FeatureHandle,
        routes: VariantRoutes,
        *,
        policy: UpdatePolicy,
        shared: bool,
    ) -> None:
        self.handle = handle
        self.control = handle.manifest.version
        self.routes = routes
        self.policy = policy
        self.shared = shared
        self.candidates: dict[str, _Candidate] = {}
        self.tally = Tally()  # the control's calls since the experiment began
        self.request: tuple[str, _Candidate] | None = None  # a guard's verdict, to act on
        self.wake = anyio.Event()
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.ended: str | None = None

    def describe(self) -> str:
        return " / ".join(f"{n} {s:g}%" for n, s in self.routes.split.shares().items())


@final
class Variants:
    """The experiments of one app run (at most one per feature)."""

    def __init__(
        self,
        app: App,
        *,
        broker: Broker,
        authority: TokenAuthority,
        audit: AuditLog,
        services: Services,
        launch: Launch,
        adopt: Callable[[FeatureHandle, Instance, list[Token]], None],
        updates: Updates,
        state_dir: Path,
        stop_timeout: float,
    ) -> None:
        self._app = app
        self._broker = broker
        self._authority = authority
        self._audit = audit
        self._tg = services
        self._launch = launch
        self._adopt = adopt
        self._updates = updates
        self._state_dir = state_dir
        self._stop_timeout = stop_timeout
        self._active: dict[str, _Experiment] = {}
        self._lock = anyio.Lock()  # one change of variants at a time
        self._closing = False

    def refuse_while_running(self, name: str, what: str) -> None:
        """UpdateError when ``name`` runs variants: it cannot be ``what`` meanwhile."""
        exp = self._active.get(name)
        if exp is not None:
            raise UpdateError(
                name,
                f"runs variants ({exp.describe()}): it cannot be {what} before one is "
                "promoted or they are aborted",
            )

    # -- setting the split ----------------------------------------------------------------

    async def set(
        self,
        handle: FeatureHandle,
        shares: Mapping[str, float],
        *,
        sticky: str | None,
        shadow: bool | None,
        approve: bool,
    ) -> VariantsStatus:
        """Run the versions ``shares`` names (the running version, a variant already running,
        or a bundle directory) with those percent shares of the keys; a running experiment is
        ramped to them (a variant whose share does not fall keeps every key it has)."""
        name = handle.name
        async with self._lock:
            if self._closing:
                raise UpdateError(name, "the app is shutting down")
            if self._updates.status(name) is not None:
                raise UpdateError(
                    name, f"an update ({self._updates.status(name)}) is under way: wait for it"
                )
            exp = self._active.get(name)
            if exp is None and handle.state is not FeatureState.RUNNING:
                raise UpdateError(name, f"is {handle.state.value}: variants need it running")
            control = handle.manifest.version if exp is None else exp.control
            resolved, bundles = await self._resolve(handle, control, exp, shares, approve=approve)
            try:
                _counts(resolved)
            except ValueError as exc:
                raise UpdateError(name, f"bad split {dict(shares)}: {exc}") from None
            if exp is None:
                return await self._begin(handle, resolved, bundles, sticky=sticky, shadow=shadow)
            return await self._ramp(exp, resolved, bundles, sticky=sticky, shadow=shadow)

    async def _resolve(
        self,
        handle: FeatureHandle,
        control: str,
        exp: _Experiment | None,
        shares: Mapping[str, float],
        *,
        approve: bool,
    ) -> tuple[dict[str, float], dict[str, tuple[Version, Path]]]:
        """Each key of ``shares`` as a version, and the new versions' bundles read and checked
        against the app's policy (a widening needs ``approve``, as for an update)."""
        name = handle.name
        resolved: dict[str, float] = {}
        bundles: dict[str, tuple[Version, Path]] = {}
        for key, share in shares.items():
            if key == control or (exp is not None and key in exp.candidates):
                resolved[key] = share
                continue
            path = Path(key)
            if not await anyio.Path(path).is_dir():
                known = [control, *([] if exp is None else exp.candidates)]
                raise UpdateError(
                    name,
                    f"{key!r} is no running version ({', '.join(known)}) and no bundle directory",
                )
            read = functools.partial(read_candidate, self._app, path, feature=name)
            candidate = await anyio.to_thread.run_sync(read)
            version = candidate.manifest.version
            if version in resolved or version == control:
                raise UpdateError(name, f"version {version} ({key}) is in the split twice")
            if exp is not None and version in exp.candidates:  # runs already: its share only
                resolved[version] = share
                continue
            diff = diff_grants(
                handle.grant,
                candidate.grant,
                before_limits=handle.manifest.limits,
                after_limits=candidate.manifest.limits,
            )
            if diff.widens and not approve:
                raise UpdateError(
                    name,
                    f"version {version} asks for more than {control} holds; approve it to go "
                    f"on (approve=True, capsule variants set --approve):\n{diff.render()}",
                )
            resolved[version] = share
            bundles[version] = (Version(candidate.manifest, candidate.grant), path)
        resolved.setdefault(control, 0)
        return resolved, bundles

    async def _begin(
        self,
        handle: FeatureHandle,
        shares: dict[str, float],
        bundles: dict[str, tuple[Version, Path]],
        *,
        sticky: str | None,
        shadow: bool | None,
    ) -> VariantsStatus:
        policy = self._app.manifest.variant_policy(handle.name)
        rule = _rule(sticky or policy.sticky, handle.name)
        shadow = policy.shadow if shadow is None else shadow
        if shadow and policy.storage == "shared":
            raise UpdateError(
                handle.name,
                'shadow variants cannot share its private storage (variants.storage = "shared" '
                f"of [policy.{handle.name}] in app.toml): a shadow would write where the "
                'control reads; use storage = "own", or run the variants without shadow mode',
            )
        control = handle.manifest.version
        ordered = {control: shares[control], **{k: v for k, v in shares.items() if k != control}}
        routes = VariantRoutes(
            first_split(ordered, new_salt()),
            rule,
            control=0,
            shadow=shadow,
        )
        exp = _Experiment(
            handle,
            routes,
            policy=self._app.manifest.update_policy(handle.name),
            shared=policy.storage == "shared",
        )
        exp.tally.watch(handle.instance.peer.stats)  # type: ignore[union-attr]  # running
        await self._start_candidates(exp, bundles)
        self._active[handle.name] = exp
        handle._variants = routes  # from the next call on, the split applies
        handle.variants = exp.describe()
        self._record(exp, "variants-set", reason=exp.describe())
        self._tg.start_soon(self._watch, exp)
        return self.status(exp)

    async def _ramp(
        self,
        exp: _Experiment,
        shares: dict[str, float],
        bundles: dict[str, tuple[Version, Path]],
        *,
        sticky: str | None,
        shadow: bool | None,
    ) -> VariantsStatus:
        name = exp.handle.name
        if sticky is not None and sticky != exp.routes.rule.text:
            raise UpdateError(
                name, f"the split is keyed by {exp.routes.rule.text}: abort to key it otherwise"
            )
        if shadow and not exp.routes.shadow:
            raise UpdateError(
                name,
                "shadow mode is set when the variants start (it can be left only): abort first",
            )
        split = ramp(exp.routes.split, shares)
        await self._start_candidates(exp, bundles, split.names)
        if shadow is False and exp.routes.shadow:
            self._leave_shadow(exp)
        exp.routes.set_split(split)  # the table was built above: one assignment
        exp.handle.variants = exp.describe()
        self._record(exp, "variants-set", reason=exp.describe())
        return self.status(exp)

    def _leave_shadow(self, exp: _Experiment) -> None:
        """The candidates serve their own shares from now on: each acts as any feature."""
        exp.routes.shadow = False
        for candidate in exp.candidates.values():
            if candidate.instance is not None:
                candidate.instance.peer.shadow = None

    async def _start_candidates(
        self,
        exp: _Experiment,
        bundles: dict[str, tuple[Version, Path]],
        names: tuple[str, ...] | None = None,
    ) -> None:
        """Start a container of each new version; none is kept if one does not start."""
        names = names or exp.routes.split.names
        exp.routes.peers += [None] * (len(names) - len(exp.routes.peers))
        started: list[_Candidate] = []
        try:
            for version, (checked, bundle) in bundles.items():
                storage = None if exp.shared else f"{exp.handle.name}@{version}"
                candidate = _Candidate(
                    dataclasses.replace(checked, storage=storage),
                    bundle,
                    names.index(version),
                    exp.policy,
                    None if storage is None else self._state_dir / "private" / storage,
                )
                started.append(candidate)
                await self._start(exp, candidate)
        except (CapsuleError, OSError) as exc:
            for candidate in started:
                await self._retire(exp, candidate)
            raise UpdateError(
                exp.handle.name, f"a variant did not start, {exp.control} serves on: {exc}"
            ) from exc
        for candidate in started:
            exp.candidates[candidate.name] = candidate

    async def _start(self, exp: _Experiment, candidate: _Candidate) -> None:
        """A container of ``candidate``, serving its share once it is ready."""
        handle = exp.handle
        handle.generation += 1  # its cgroup and view are named apart from the control's
        shadow = candidate.mark if exp.routes.shadow else None  # from its first message on
        version = dataclasses.replace(candidate.version, shadow=shadow)
        instance, tokens = await self._launch(handle, version)
        self._adopt(handle, instance, tokens)  # counted, and its tokens renewed
        instance.on_end = functools.partial(self._ended, exp, candidate, instance)
        self._broker.mute(instance.peer)  # events reach the control only: no doubled effects
        candidate.instance = instance
        candidate.probation.watch(instance.peer.stats, settle=False)
        candidate.state = "running"
        exp.routes.peers[candidate.index] = instance.peer
        if instance.ended.is_set():  # it ended between ready and here
            self._ended(exp, candidate, instance, instance.ending)  # type: ignore[arg-type]

    # -- guards -------------------------------------------------------------------------

    def _ended(
        self, exp: _Experiment, candidate: _Candidate, instance: Instance, ending: Ending
    ) -> None:
        """A candidate's container ended: its calls go to the control from now on; a crash
        counts against its guard, and below the limit it is started again."""
        for token in instance.spec.start.tokens:
            self._authority.revoke(token)
        if exp.routes.peers[candidate.index] is instance.peer:
            exp.routes.peers[candidate.index] = None
        if ending.requested or exp.ended is not None or candidate.instance is not instance:
            return
        candidate.state = "restarting"
        _log.warning("variant exited", feature=exp.handle.name, version=candidate.name)
        if candidate.probation.crashed():
            crashes = candidate.probation.crashes
            exp.request = (f"{crashes} crash(es) (last: {ending.reason})", candidate)
            exp.wake.set()
            return
        self._tg.start_soon(self._restart, exp, candidate)

    async def _restart(self, exp: _Experiment, candidate: _Candidate) -> None:
        async with self._lock:
            if exp.ended is not None:
                return
            try:
                await self._start(exp, candidate)
            except (CapsuleError, OSError) as exc:
                exp.request = (f"did not start again: {exc}", candidate)
                exp.wake.set()

    async def _watch(self, exp: _Experiment) -> None:
        """Judge each candidate against the control until the experiment ends; a candidate
        that fails is aborted, as a failed update is rolled back."""
        with exp.scope:
            while exp.ended is None:
                control = exp.handle.instance
                if control is not None and not control.ended.is_set():
                    exp.tally.watch(control.peer.stats)
                current = exp.tally.current
                enough = current is not None and current.samples >= exp.policy.min_calls
                baseline = current.p99() if enough and current is not None else None
                for candidate in exp.candidates.values():
                    candidate.probation.baseline_p99 = baseline
                    reason = candidate.probation.verdict()
                    if reason is not None and exp.request is None:
                        exp.request = (reason, candidate)
                if exp.request is not None:
                    reason, failed = exp.request
                    await self._end(
                        exp,
                        f"{failed.name} failed its guard: {reason}",
                        event="variants-abort",
                        decision="fail",
                        failed=failed,
                    )
                    return
                exp.wake = anyio.Event()
                with anyio.move_on_after(_TICK):
                    await exp.wake.wait()

    # -- ending -------------------------------------------------------------------------

    async def promote(self, handle: FeatureHandle, version: str) -> UpdateReport | None:
        """Make ``version`` the feature's only version. The control: the candidates go. A
        candidate: the candidates go, then a live update makes it the running version (the
        control's state moved over; no keep window). None when the control was kept."""
        name = handle.name
        async with self._lock:
            exp = self._experiment(name)
            if version != exp.control and version not in exp.candidates:
                known = ", ".join([exp.control, *exp.candidates])
                raise UpdateError(name, f"runs no variant {version!r} ({known})")
            reason = f"promoted {version}"
            await self._end(exp, reason, event="variants-promote", decision="operate")
            if version == exp.control:
                return None
            candidate = exp.candidates[version]
            target = dataclasses.replace(candidate.version, storage=None)
            policy = msgspec.structs.replace(exp.policy, probation=0.0, keep=0.0)
            report = await self._updates.run(handle, target, candidate.bundle, policy=policy)
        await self._updates.wait_settled(name)
        return report

    async def abort(self, handle: FeatureHandle, reason: str = "aborted by hand") -> VariantsStatus:
        """Stop every candidate: all calls to the control, which runs on alone. Returns the
        experiment's last figures."""
        async with self._lock:
            exp = self._experiment(handle.name)
            return await self._end(exp, reason, event="variants-abort", decision="operate")

    def _experiment(self, name: str) -> _Experiment:
        exp = self._active.get(name)
        if exp is None:
            raise UpdateError(name, "runs no variants")
        return exp

    async def _end(
        self,
        exp: _Experiment,
        reason: str,
        *,
        event: str,
        decision: str,
        failed: _Candidate | None = None,
    ) -> VariantsStatus:
        """All calls to the control at once; then each candidate's calls in flight finish
        (up to update.drain) and its container, tokens and own storage go. Returns the
        figures at the end."""
        if exp.ended is not None:
            await exp.done.wait()
            return self.status(exp)
        exp.ended = reason
        handle = exp.handle
        handle._variants = None  # the split is off before anything else happens
        status = self.status(exp)
        with anyio.CancelScope(shield=True):
            for candidate in exp.candidates.values():
                await self._retire(exp, candidate)
        handle.variants = None
        self._active.pop(handle.name, None)
        figures = {} if failed is None else failed.probation.figures()
        self._record(exp, event, decision=decision, reason=reason, **figures)
        if failed is not None:
            _log.error("variant aborted", feature=handle.name, reason=reason)
        exp.done.set()
        exp.scope.cancel()  # the guards' watch (when it is not what ended it)
        return dataclasses.replace(status, ended=reason)

    async def _retire(self, exp: _Experiment, candidate: _Candidate) -> None:
        instance = candidate.instance
        candidate.state = "stopped"
        if instance is not None and not instance.ended.is_set():
            await stop_version(
                self._authority, instance, self._stop_timeout, drain=exp.policy.drain
            )
        if candidate.storage is not None:
            await anyio.to_thread.run_sync(_remove_tree, candidate.storage)

    def _record(self, exp: _Experiment, event: str, **fields: object) -> None:
        fields.setdefault("decision", "operate")
        self._audit.record(
            event,
            feature=exp.handle.name,
            control=exp.control,
            shares=exp.routes.split.shares(),
            sticky=exp.routes.rule.text,
            shadow=exp.routes.shadow,
            **fields,  # type: ignore[arg-type]
        )

    # -- figures ------------------------------------------------------------------------

    def statuses(self) -> dict[str, VariantsStatus]:
        """Every experiment under way, by feature."""
        return {name: self.status(exp) for name, exp in self._active.items()}

    def find(self, name: str) -> VariantsStatus | None:
        exp = self._active.get(name)
        return None if exp is None else self.status(exp)

    def status(self, exp: _Experiment) -> VariantsStatus:
        shares = exp.routes.split.shares()
        handle = exp.handle
        control_stats = exp.tally.current
        rows = [
            variant_row(
                exp.control,
                "control",
                shares.get(exp.control, 0.0),
                handle.state.value,
                handle.instance,
                exp.tally.calls,
                exp.tally.failures,
                0,
                str(self._state_dir / "private" / handle.name),
            )
        ]
        errors, latencies = {}, {}
        role = "shadow" if exp.routes.shadow else "candidate"
        for candidate in exp.candidates.values():
            probation = candidate.probation
            storage = candidate.storage or self._state_dir / "private" / handle.name
            rows.append(
                variant_row(
                    candidate.name,
                    role,
                    shares.get(candidate.name, 0.0),
                    candidate.state,
                    candidate.instance,
                    probation.calls,
                    probation.failures,
                    probation.crashes,
                    str(storage),
                    candidate.mark.blocked,
                )
            )
            errors[candidate.name] = rate_diff(
                (exp.tally.failures, exp.tally.calls), (probation.failures, probation.calls)
            )
            mine = candidate.instance
            latencies[candidate.name] = (
                None
                if control_stats is None or mine is None
                else latency_diff(control_stats.latencies(), mine.peer.stats.latencies())
            )
        return VariantsStatus(
            feature=handle.name,
            sticky=exp.routes.rule.text,
            shadow=exp.routes.shadow,
            variants=tuple(rows),
            error_rate_diff=errors,
            latency_diff=latencies,
            ended=exp.ended,
        )

    async def aclose(self) -> None:
        """End every experiment (its candidates stopped): the controls serve on."""
        self._closing = True
        for exp in list(self._active.values()):
            await self._end(exp, "the app shut down", event="variants-abort", decision="operate")


def _remove_tree(path: Path) -> None:
    """A candidate's own private storage, gone with it (an error is raised, not hidden)."""
    if path.exists():
        shutil.rmtree(path)


def _rule(text: str, feature: str) -> KeyRule:
    try:
        return parse_sticky(text, f"variants of {feature}")
    except ConfigError as exc:
        raise UpdateError(feature, exc.message) from None
