"""Checking a live update from a test: it drops no call and the new version holds the
old one's state.

Drives a real supervisor through its public API (calls and ``update``); it decides
nothing about updates and touches no container itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import anyio

from capsule._supervisor._supervisor import Supervisor
from capsule._supervisor._update import UpdateReport

__all__ = ["check_live_update"]


async def check_live_update(
    sup: Supervisor,
    feature: str,
    bundle: str | os.PathLike[str],
    *,
    service: str,
    payload: Any = None,
    state: str | None = None,
    same: Callable[[Any, Any], bool] | None = None,
    pause: float = 0.002,
    approve: bool = False,
) -> UpdateReport:
    """Update ``feature`` to ``bundle`` while calling ``feature.service`` with ``payload``
    every ``pause`` seconds from the host; raise AssertionError if any of those calls
    failed, if none ran during the update, or if ``state`` (a service answering the
    feature's state; the new version must provide it too) answers differently after the
    update than before (``same(before, after)`` decides, equality by default). Returns the
    update's report::

        v2 = app.version("counter", "2.0.0")
        ...  # its services, and @v2.import_state
        async with app.open() as sup:
            await check_live_update(sup, "counter", app.bundle(v2), service="get", state="get")
    """
    before = None if state is None else await sup.call(feature, state)
    failures: list[str] = []
    answered = [0, 0]  # before and after the update returned
    done = anyio.Event()
    updated = anyio.Event()

    async def load() -> None:
        while not done.is_set():
            try:
                await sup.call(feature, service, payload)
            except Exception as exc:  # every failure is reported, not raised here
                failures.append(f"{type(exc).__name__}: {exc}")
            else:
                answered[updated.is_set()] += 1
            with anyio.move_on_after(pause):
                await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        try:
            report = await sup.update(feature, bundle, approve=approve)
        finally:
            updated.set()
        with anyio.fail_after(30):
            while answered[1] < 3 and not failures:  # noqa: ASYNC110 - the load's own pace
                await anyio.sleep(pause)
        done.set()
    if failures:
        raise AssertionError(f"{len(failures)} call(s) failed during the update: {failures[:5]}")
    if answered[0] == 0:
        raise AssertionError(f"no call to {feature}.{service} ran before the switch")
    if state is not None:
        after = await sup.call(feature, state)
        if not (same or _equal)(before, after):
            raise AssertionError(f"the state changed over the update: {before!r} -> {after!r}")
    return report


def _equal(before: Any, after: Any) -> bool:
    return bool(before == after)
