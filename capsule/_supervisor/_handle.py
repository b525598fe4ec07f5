"""A feature of a running app as the host program sees it: its state, tokens and statistics.

State and snapshots only: it starts, stops and restarts nothing (the supervisor does),
and it is what the broker asks whether a feature can take a call now.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

import anyio

from capsule._broker._routes import Peer
from capsule._broker._variants import VariantRoutes
from capsule._manifest import FeatureGrant, FeatureManifest
from capsule._supervisor._demand import Demand
from capsule._supervisor._instance import Instance
from capsule._supervisor._records import FeatureStatistics
from capsule._supervisor._restart import RestartTracker
from capsule.errors import CapsuleError, FeatureUnavailableError, OverloadedError

__all__ = ["FeatureHandle", "FeatureState", "FeatureStatistics", "HeldToken", "NoPublicConstructor"]


class FeatureState(enum.Enum):
    """Where a feature is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESTARTING = "restarting"
    QUARANTINED = "quarantined"


@final
@dataclass(frozen=True, slots=True)
class HeldToken:
    """A token a running container holds: its id, text, capabilities and expiry (Unix time)."""

    token_id: str
    text: str
    capabilities: tuple[str, ...]
    expires: float


@final
class _Hold:
    """Calls to a feature held while its route switches versions, up to ``limit``."""

    __slots__ = ("limit", "released", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting = 0
        self.released = anyio.Event()


class NoPublicConstructor(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


@final
class FeatureHandle(metaclass=NoPublicConstructor):
    """One feature of a running app, as the supervisor tracks it. Returned by ``sup.features()``."""

    # slots: an app may declare many features it never starts (on-demand), each with a handle
    __slots__ = (
        "_changed",
        "_hold",
        "_variants",
        "demand",
        "generation",
        "grant",
        "index",
        "instance",
        "last_error",
        "last_exit",
        "manifest",
        "name",
        "on_state",
        "renewal_error",
        "renewals",
        "renewals_failed",
        "restarts",
        "start_failure",
        "state",
        "update",
        "variants",
        "wanted",
    )

    def __init__(self, manifest: FeatureManifest, index: int, *, grant: FeatureGrant) -> None:
        self.name = manifest.name
        self.manifest = manifest  # the version it runs (a live update changes it)
        self.grant = grant  # and the authority the app grants that version
        self.index = index
        self.state = FeatureState.STOPPED
        self.instance: Instance | None = None
        self.restarts = RestartTracker(manifest.restart)
        self.last_exit: str | None = None
        self.last_error: CapsuleError | None = None
        self.wanted = False  # whether the supervisor should keep it running
        self.generation = 0
        self.renewals = 0
        self.renewals_failed = 0
        self.renewal_error: str | None = None
        self.update: str | None = None  # what a live update under way is doing, for ps
        self._hold: _Hold | None = None
        #: while it runs variants side by side: how the broker splits its calls
        self._variants: VariantRoutes | None = None
        self.variants: str | None = None  # the experiment under way, in words, for ps
        self.demand: Demand | None = None  # an on-demand feature's record (start in app.toml)
        #: why the last wake of an on-demand feature failed, for the calls it held
        self.start_failure: CapsuleError | None = None
        #: told of every change of state, with the state before (the service announcements)
        self.on_state: Callable[[FeatureHandle, FeatureState], None] | None = None
        #: set at the next change of state; made by the first waiter (most never have one)
        self._changed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<FeatureHandle {self.name} {self.state.value}>"

    def _set(self, state: FeatureState) -> None:
        previous, self.state = self.state, state
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if self.on_state is not None and previous is not state:
            self.on_state(self, previous)

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - trio's own wait_* style takes a cancel scope; this one is the documented shape
        """Wait until the feature is running; FeatureUnavailableError if it is stopped or failed."""
        with anyio.fail_after(timeout):
            await self._running_instance()

    @property
    def running(self) -> bool:
        return self.state is FeatureState.RUNNING

    # holding calls while the route switches versions (a live update, a rollback)

    def _hold_calls(self, limit: int) -> None:
        """From now on new calls wait (at most ``limit`` of them; past it they are refused as
        overloaded) instead of reaching the running container, until :meth:`_release`."""
        if self._hold is None:
            self._hold = _Hold(limit)

    def _release(self) -> None:
        """Let the held calls go to whatever container the handle points at now."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.released.set()
        self._set(self.state)

    @property
    def held(self) -> int:
        """Calls waiting for a switch of versions to end."""
        return 0 if self._hold is None else self._hold.waiting

    async def _running_instance(self) -> Instance:
        """The live container once the feature runs (not one that just ended)."""
        while True:
            hold = self._hold
            if hold is not None:
                await hold.released.wait()
                continue
            while self.state is not FeatureState.RUNNING:
                self._check_state()
                await self._change().wait()
            if self._hold is not None:  # held while it became ready (state moving in)
                continue
            instance = self.instance
            if instance is not None and instance.ready is not None and not instance.ended.is_set():
                return instance
            await self._change().wait()  # it just ended: the supervisor is about to act

    def _change(self) -> anyio.Event:
        """The event the next change of state sets."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    # what the broker asks of a feature (capsule._broker._broker.Target)

    def _live_peer(self) -> Peer | None:
        instance = self.instance
        if (
            self._hold is None
            and self.state is FeatureState.RUNNING
            and instance is not None
            and instance.ready is not None
            and not instance.ended.is_set()
        ):
            return instance.peer
        return None

    async def _wait_peer(self) -> Peer:
        hold = self._hold
        if hold is None:
            return (await self._running_instance()).peer
        try:  # counted by _check_available already
            await hold.released.wait()
        finally:
            hold.waiting = max(0, hold.waiting - 1)
        return (await self._running_instance()).peer

    def tokens(self) -> tuple[HeldToken, ...]:
        """The tokens the running container holds (admitted by the broker), delegated ones too."""
        instance = self.instance
        if instance is None or instance.ended.is_set():
            return ()
        return tuple(
            HeldToken(
                h.claims.token_id, h.token, tuple(str(c) for c in h.claims.caps), h.claims.exp
            )
            for h in instance.peer.handles.values()
            if h.grant.alive
        )

    def _check_available(self, caller: str) -> None:
        """Raise if a call must fail now rather than wait; a call that may wait while the
        route switches versions is counted here (the broker waits for it next). ``caller``'s
        request is authorized already: a stopped on-demand feature is woken for it here."""
        hold = self._hold
        if hold is None:
            demand = self.demand
            if demand is not None and self.state is FeatureState.STOPPED and not self.wanted:
                demand.wake(self, caller)
            self._check_state()
            return
        if hold.waiting >= hold.limit:
            raise OverloadedError(
                f"{hold.limit} calls to {self.name!r} are held already while it switches "
                "versions or starts on demand (update.queue of its policy in app.toml)"
            )
        hold.waiting += 1

    def _check_state(self) -> None:
        if self.state is FeatureState.QUARANTINED:
            raise FeatureUnavailableError(
                self.name, f"is quarantined after too many restarts (last: {self.last_exit})"
            )
        if self.state is FeatureState.STOPPED and not self.wanted:
            if self.start_failure is not None:
                raise self.start_failure
            raise FeatureUnavailableError(self.name, "is stopped")

    def statistics(self) -> FeatureStatistics:
        instance = self.instance
        stats = None if instance is None else instance.statistics()
        view = None if instance is None else instance.view
        running = instance is not None and not instance.ended.is_set()
        demand = self.demand
        state = self.state.value
        if demand is not None and self.state is FeatureState.STOPPED:
            state = "stopped (on-demand)"
        return FeatureStatistics(
            name=self.name,
            version=self.manifest.version,
            state=state,
            pid=instance.pid if running and instance is not None else None,
            restarts=self.restarts.total,
            calls_total=0 if instance is None else instance.calls_total,
            calls_in_flight=0 if instance is None else instance.in_flight,
            messages=0 if instance is None else instance.peer.messages,
            denied=0 if instance is None else instance.peer.denied,
            events_dropped=(0 if instance is None else instance.peer.conn.dropped)
            + (0 if demand is None else demand.events_dropped),
            uptime=anyio.current_time() - instance.started_at if running and instance else None,
            last_exit=self.last_exit,
            memory_current=None if stats is None else stats.memory_current,
            memory_limit=None if stats is None else stats.memory_limit,
            oom_kills=0 if stats is None else stats.oom_kills,
            pids_current=None if stats is None else stats.pids_current,
            cpu_usage_ns=None if stats is None else stats.cpu_usage_ns,
            files_allowed=0 if view is None else view.allowed,
            files_denied=0 if view is None else view.denied,
            connections=0 if instance is None else instance.peer.connections,
            tokens_renewed=self.renewals,
            renewals_failed=self.renewals_failed,
            renewal_error=self.renewal_error,
            subscriptions=0 if instance is None else len(instance.peer.subscriptions),
            subscriptions_limit=0 if instance is None else instance.peer.limits.subscriptions,
            delegations=0 if instance is None else instance.delegations(),
            delegations_limit=0 if instance is None else instance.peer.limits.delegations,
            queued=0 if instance is None else instance.peer.conn.queued,
            queue_limit=0 if instance is None else instance.peer.conn.queue_limit,
            update=self.update,
            held=self.held,
            variants=self.variants,
            on_demand=demand is not None,
            wakes=0 if demand is None else demand.wakes,
            last_wake=None if demand is None else demand.last_wake,
            time_to_ready=None if demand is None else demand.time_to_ready,
            idle_left=None
            if demand is None or not running
            else demand.idle_left(anyio.current_time()),
        )
