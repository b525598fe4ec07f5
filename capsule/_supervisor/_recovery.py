"""What follows an unrequested exit: the feature's restart policy and the app's strategy.

Decides whether a crashed feature is restarted (after its backoff), stopped or quarantined,
and which other features restart with it (``one_for_one``, ``one_for_all``,
``rest_for_one``). Starting and stopping containers is the supervisor's: it is handed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import final

import anyio
import structlog

from capsule._manifest._model import Strategy
from capsule._supervisor._handle import FeatureHandle, FeatureState
from capsule._supervisor._instance import Ending
from capsule._tasks import TaskStarter

__all__ = ["Recovery"]

_log = structlog.get_logger("capsule.supervisor")


@final
class Recovery:
    """Applies restart policies and the app's strategy to the features of one app run."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        handles: Mapping[str, FeatureHandle],
        order: Sequence[str],
        lock: anyio.Lock,
        task_group: TaskStarter,
        launch: Callable[[FeatureHandle], Awaitable[None]],
        stop: Callable[..., Awaitable[None]],
        closing: Callable[[], bool],
    ) -> None:
        self._strategy = strategy
        self._handles = handles
        self._order = order  # app order, plugins after; the supervisor's own list
        self._lock = lock
        self._tg = task_group
        self._launch = launch
        self._stop = stop
        self._closing = closing

    def after_exit(self, handle: FeatureHandle, ending: Ending) -> None:
        """Apply the restart policy and the app's strategy to an unrequested exit."""
        if self._closing() or not handle.wanted:
            handle._set(FeatureState.STOPPED)
            return
        if not handle.restarts.wants_restart(clean_exit=ending.clean):
            handle.wanted = False
            handle._set(FeatureState.STOPPED)
            return
        delay = handle.restarts.next_delay(anyio.current_time())
        if delay is None:
            policy = handle.manifest.restart
            handle.wanted = False
            handle._set(FeatureState.QUARANTINED)
            _log.error(
                "feature quarantined",
                feature=handle.name,
                restarts=policy.max_restarts,
                window=policy.window,
                last=ending.reason,
            )
            return
        handle._set(FeatureState.RESTARTING)
        self._tg.start_soon(self._restart_after, handle, delay)

    def _affected(self, handle: FeatureHandle) -> list[FeatureHandle]:
        if self._strategy == "one_for_all":
            names: Sequence[str] = self._order
        elif self._strategy == "rest_for_one":
            names = self._order[handle.index :]
        else:
            names = [handle.name]
        return [self._handles[n] for n in names if n == handle.name or self._handles[n].wanted]

    async def _restart_after(self, handle: FeatureHandle, delay: float) -> None:
        _log.info("feature restarting", feature=handle.name, delay=round(delay, 3))
        await anyio.sleep(delay)
        async with self._lock:
            if self._closing() or handle.state is not FeatureState.RESTARTING:
                return
            group = self._affected(handle)
            for other in reversed(group):
                if other is not handle:
                    await self._stop(other, keep_wanted=True)
                    other._set(FeatureState.RESTARTING)
            for member in group:
                if member.wanted and member.state is not FeatureState.RUNNING:
                    await self._launch(member)
