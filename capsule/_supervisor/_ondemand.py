"""On-demand features: a container started by the first permitted call, stream or event
that needs it, and drained and removed once it has been idle for its ``idle_stop``.

Decides when an on-demand feature wakes and when it is idle. Starting and stopping
containers is the supervisor's (handed in), authorizing a request is the broker's (a wake
is asked for only once the request was allowed), and the state carried across an idle
stop is bytes it never decodes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, final

import anyio
import msgspec
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._broker._topics import matches
from capsule._ipc._messages import HOST
from capsule._ipc._statefile import StateFileError
from capsule._manifest import App
from capsule._supervisor._demand import Demand, HeldEvent
from capsule._supervisor._handle import FeatureHandle, FeatureState
from capsule._supervisor._handoff import HandoffError
from capsule._supervisor._instance import Instance
from capsule._tasks import Services
from capsule._tokens._caps import Action, target_covers
from capsule.errors import CapsuleError, FeatureStartError, OverloadedError

__all__ = ["WAKE_BURST", "WAKE_RATE", "OnDemand"]

_log = structlog.get_logger("capsule.supervisor")

WAKE_BURST: Final = 16
"""Stopped features one container may wake at once (its calls, streams and events)..."""
WAKE_RATE: Final = 4.0
"""...and per second after that; past it its request fails as overloaded (audited)."""
_AGAIN: Final = "@held"
"""Who wakes a feature again for calls that came while it was being stopped as idle."""
_STEP_MAX: Final = 1.0
_STEP_MIN: Final = 0.01


@final
class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(WAKE_BURST)
        self.at = now


@final
class OnDemand:
    """Wakes and idles the on-demand features of one app run (``start = "on-demand"``)."""

    def __init__(
        self,
        app: App,
        *,
        handles: Mapping[str, FeatureHandle],
        lock: anyio.Lock,
        broker: Broker,
        audit: AuditLog,
        services: Services,
        launch: Callable[[FeatureHandle], Awaitable[None]],
        stop: Callable[[FeatureHandle], Awaitable[None]],
        closing: Callable[[], bool],
        timeout: float,
        grace: float,
    ) -> None:
        self._app = app
        self._handles = handles
        self._lock = lock
        self._broker = broker
        self._audit = audit
        self._tg = services
        self._launch = launch
        self._stop = stop
        self._closing = closing
        self._timeout = timeout  # for export_state and import_state (the start timeout)
        self._grace = grace  # for on_stop (the stop timeout)
        self._buckets: dict[str, _Bucket] = {}
        self._stopping: set[str] = set()
        #: the topics each on-demand feature is granted to subscribe to: what it hears of
        #: while stopped (a stopped container holds no subscription of its own)
        self._subscribes: dict[str, tuple[str, ...]] = {}
        wake = self._wake  # one bound method for every feature
        for name in app.start_order:
            policy = app.manifest.start_policy(name)
            if not policy.on_demand:
                continue
            handle = handles[name]
            handle.demand = Demand(policy, wake)
            self._subscribes[name] = tuple(
                cap.target
                for cap in app.grants[name].capabilities
                if cap.kind == "icc" and Action.ICC_SUBSCRIBE in cap.action_set()
            )
        if any(self._subscribes.values()):
            broker.on_event = self._event

    def eager(self, name: str) -> bool:
        """Whether ``name`` starts with the app (False: when first needed)."""
        return name not in self._subscribes

    async def settled(self, handle: FeatureHandle) -> None:
        """Wait for a wake of ``handle`` under way to end (before a start, stop or restart
        of it, which must not run beside the wake)."""
        demand = handle.demand
        starting = None if demand is None else demand.starting
        if starting is not None:
            await starting.wait()

    # -- waking -------------------------------------------------------------------------

    def _wake(self, handle: FeatureHandle, caller: str) -> None:
        """Start stopped ``handle`` for ``caller``, whose request is authorized already: its
        calls wait for it from now on (one start, however many ask at once)."""
        if handle.wanted or handle.state is not FeatureState.STOPPED or self._closing():
            return
        self._allow(caller, handle.name)
        self._note_wake(handle, caller)
        self._tg.start_soon(self._start, handle)

    def _allow(self, caller: str, feature: str) -> None:
        """Count a wake against ``caller``'s rate (the host program's are not limited)."""
        if caller in (HOST, _AGAIN):
            return
        now = anyio.current_time()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(now)
        bucket.tokens = min(float(WAKE_BURST), bucket.tokens + (now - bucket.at) * WAKE_RATE)
        bucket.at = now
        if bucket.tokens < 1:
            raise OverloadedError(
                f"{caller!r} woke stopped features more than {WAKE_BURST} times at once "
                f"({WAKE_RATE:g} a second after that): {feature!r} is not started for it"
            )
        bucket.tokens -= 1

    def _note_wake(self, handle: FeatureHandle, why: str) -> None:
        demand = handle.demand
        assert demand is not None  # noqa: S101 - only on-demand features are woken
        handle.wanted = True
        handle.start_failure = None
        demand.wakes += 1
        demand.last_wake = time.time()
        demand.woken_at = anyio.current_time()
        demand.time_to_ready = None
        demand.idle_since = None
        self._audit.record("wake", feature=handle.name, decision="operate", reason=why)

    async def _start(self, handle: FeatureHandle) -> None:
        """Without the supervisor's lock: the request that woke it may come from a feature
        being started under that lock (an ``on_start`` hook calling it)."""
        demand = handle.demand
        if (
            self._closing()
            or not handle.wanted
            or handle.state is not FeatureState.STOPPED
            or demand is None
            or demand.starting is not None
        ):
            return  # stopped again meanwhile, or started by other means
        await self._bring_up(handle)

    async def _bring_up(self, handle: FeatureHandle) -> CapsuleError | None:
        """Start ``handle``, after the on-demand features it requires; what went wrong (its
        held calls are answered with it), or None once it is ready. Two features may start
        at once this way, as an update starts a version beside the running one."""
        demand = handle.demand
        assert demand is not None  # noqa: S101 - only on-demand features are woken
        carried = demand.state
        starting = demand.starting = anyio.Event()  # one start at a time (single flight)
        # calls wait until its state is back and the events that woke it are delivered
        handle._hold_calls(self._app.manifest.update_policy(handle.name).queue)
        try:
            problem = await self._requirements(handle)
            if problem is None:
                await self._launch(handle)
                if not handle.running:
                    problem = handle.last_error or FeatureStartError(handle.name, "did not start")
                elif self._closing():  # the app closed while it started: nothing may outlive it
                    await self._stop(handle)
                    problem = FeatureStartError(handle.name, "the app is closing")
            if problem is not None:
                self._failed(handle, problem)
                return problem
            if carried is not None:
                await self._import(handle, demand, carried)
            self._ready(handle, demand)
            return None
        finally:
            handle._release()
            demand.starting = None
            starting.set()

    async def _requirements(self, handle: FeatureHandle) -> CapsuleError | None:
        """Start the stopped on-demand features ``handle`` requires, first."""
        for dep in handle.manifest.requires:
            other = self._handles.get(dep)
            if other is None or other.demand is None or other.running:
                continue
            started = other.demand.starting
            if started is not None:  # woken already: wait for that start
                await started.wait()
                problem = None if other.running else other.start_failure or other.last_error
            else:
                if not other.wanted:
                    self._note_wake(other, f"required by {handle.name}")
                problem = await self._bring_up(other)
            if problem is not None:
                return FeatureStartError(
                    handle.name, f"requires {dep!r}, which did not start: {problem}"
                )
        return None

    def _ready(self, handle: FeatureHandle, demand: Demand) -> None:
        now = anyio.current_time()
        if demand.woken_at is not None:
            demand.time_to_ready = now - demand.woken_at
        demand.idle_since = now
        delivered = self._deliver_held(handle, demand)
        ready = "-" if demand.time_to_ready is None else f"{demand.time_to_ready:.3f}s"
        self._audit.record(
            "wake",
            feature=handle.name,
            decision="operate",
            reason=f"ready in {ready}; {delivered} held events delivered",
        )
        _log.info("on-demand feature woke", feature=handle.name, ready=ready, events=delivered)

    def _deliver_held(self, handle: FeatureHandle, demand: Demand) -> int:
        """Deliver the events kept for it through its own subscriptions; those none of them
        matches are counted as dropped. Returns how many were delivered."""
        instance = handle.instance
        events = demand.take_events()
        delivered = 0
        if instance is not None:
            for event in events:
                delivered += self._broker.deliver_to(
                    instance.peer, event.topic, event.payload, event.sender
                )
        demand.events_dropped += len(events) - delivered
        return delivered

    def _failed(self, handle: FeatureHandle, problem: CapsuleError) -> None:
        """A wake failed: every call held for it gets ``problem``. It counted against its
        restart limit (quarantined past it); otherwise the next request tries again."""
        demand = handle.demand
        if demand is not None:
            demand.events_dropped += len(demand.take_events())
        self._audit.record("wake", feature=handle.name, decision="refuse", reason=str(problem))
        if handle.state is FeatureState.QUARANTINED:
            return
        error = (
            problem
            if isinstance(problem, FeatureStartError)
            else FeatureStartError(handle.name, str(problem))
        )
        handle.start_failure = error
        handle.wanted = False
        handle._set(FeatureState.STOPPED)  # a restart the failure scheduled does not happen

    async def _import(self, handle: FeatureHandle, demand: Demand, data: bytes) -> None:
        demand.state = None
        instance = handle.instance
        assert instance is not None  # noqa: S101 - it runs
        try:
            await instance.handoff.import_state(demand.state_version, data, self._timeout)
        except HandoffError as exc:
            _log.warning("state not restored after idle stop", feature=handle.name, error=str(exc))
            self._audit.record(
                "wake", feature=handle.name, decision="refuse", reason=f"state not restored: {exc}"
            )

    # -- events to stopped features -------------------------------------------------------

    def _event(self, topic: str, payload: msgspec.Raw, sender: str) -> int:
        """An event about to be delivered: kept for each on-demand feature that would hear
        it were it running and is stopped (woken by a ``wake_on`` topic; counted and dropped
        otherwise) or starting. Returns how many it was kept for."""
        kept = 0
        for name, granted in self._subscribes.items():
            if not any(target_covers("icc", pattern, topic) for pattern in granted):
                continue
            handle = self._handles[name]
            demand = handle.demand
            if handle.running or demand is None:
                continue  # its own subscriptions decide
            if not handle.wanted:
                if handle.state is not FeatureState.STOPPED or not any(
                    matches(pattern, topic) for pattern in demand.policy.wake_on
                ):
                    demand.events_dropped += 1
                    continue
                try:
                    self._wake(handle, sender)
                except OverloadedError as exc:
                    demand.events_dropped += 1
                    self._audit.record("wake", feature=sender, decision="deny", reason=str(exc))
                    continue
            kept += demand.hold(HeldEvent(topic, payload, sender))
        return kept

    # -- idle stop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Stop each on-demand feature that has been idle for its ``idle_stop`` (a task for
        the app's life)."""
        idles = [
            handle.demand.policy.idle_stop
            for handle in self._handles.values()
            if handle.demand is not None and handle.demand.policy.idle_stop is not None
        ]
        if not idles:
            return
        step = max(_STEP_MIN, min(_STEP_MAX, min(idles) / 4))
        seen: dict[str, tuple[int, int]] = {}
        while True:
            await anyio.sleep(step)
            now = anyio.current_time()
            for name in self._subscribes:
                handle = self._handles[name]
                demand = handle.demand
                assert demand is not None  # noqa: S101 - every one of these has its record
                idle = demand.policy.idle_stop
                instance = handle.instance
                if idle is None or name in self._stopping:
                    continue
                if not handle.running or instance is None:
                    demand.idle_since = None
                    continue
                if demand.events and demand.starting is None:  # started by sup.start
                    self._deliver_held(handle, demand)
                activity = (id(instance), instance.calls_total + instance.peer.messages)
                if seen.get(name) != activity or not await self._idle(handle):
                    seen[name] = activity
                    demand.idle_since = now
                    continue
                if demand.idle_since is None:
                    demand.idle_since = now
                elif now - demand.idle_since >= idle:
                    self._stopping.add(name)
                    self._tg.start_soon(self._idle_stop, handle, demand)

    async def _idle(self, handle: FeatureHandle) -> bool:
        """Nothing in flight, no open stream, no held socket or listener, no pending event."""
        instance = handle.instance
        if instance is None or handle.update is not None or handle.held or handle.demand is None:
            return False
        peer = instance.peer
        if peer.calls or peer.requests or peer.conn.queued or handle.demand.events:
            return False
        return await self._broker.network.holding(peer) == 0

    async def _idle_stop(self, handle: FeatureHandle, demand: Demand) -> None:
        try:
            async with self._lock:
                instance = handle.instance
                if self._closing() or not handle.running or instance is None:
                    return
                if not await self._idle(handle):
                    demand.idle_since = anyio.current_time()
                    return
                idle_for = anyio.current_time() - (demand.idle_since or anyio.current_time())
                handle._hold_calls(self._app.manifest.update_policy(handle.name).queue)
                try:
                    kept = await self._export(handle, instance, demand)
                    handle._set(FeatureState.STOPPING)
                    await instance.stop(self._grace)  # on_stop runs; then its tokens go
                    with anyio.move_on_after(self._timeout):  # and its view and cgroup
                        await instance.released.wait()
                    await self._stop(handle)  # stopped (on-demand) once nothing is left
                    demand.idle_since = None
                    self._audit.record(
                        "idle-stop",
                        feature=handle.name,
                        decision="operate",
                        reason=f"idle for {idle_for:.1f}s; {kept}",
                    )
                    _log.info("on-demand feature stopped as idle", feature=handle.name)
                    if handle.held:  # calls came while it stopped: they start it again
                        self._wake(handle, _AGAIN)
                finally:
                    handle._release()
        finally:
            self._stopping.discard(handle.name)

    async def _export(self, handle: FeatureHandle, instance: Instance, demand: Demand) -> str:
        """Keep what its ``export_state`` returns, in the supervisor's memory, for its next
        container; says what was kept."""
        limit = self._app.manifest.update_policy(handle.name).state_max
        demand.state = None
        try:
            state = await instance.handoff.export_state(limit, self._timeout)
            if state is None:
                return "no export_state"
            with state:
                data = state.read()
        except (HandoffError, StateFileError, OSError) as exc:
            _log.warning("state not kept at idle stop", feature=handle.name, error=str(exc))
            return f"state not kept: {exc}"
        demand.state = data
        demand.state_version = handle.manifest.version
        return f"{len(data)} bytes of state kept"
