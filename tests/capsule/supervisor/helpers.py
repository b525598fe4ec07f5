"""Shared pieces of the supervisor tests: small limits, fast restarts, polling and background load.

Everything here runs on the host side, except :func:`echo`, which is shipped into
containers as a service (by value, like any handler defined outside capsule).
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from capsule import FeatureState, Supervisor
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp

#: small ceilings for every test container
LIMITS: Mapping[str, Any] = {"memory": "64MiB", "pids": 16, "cpu": 0.2, "tmp": "1MiB"}
#: fast restarts: three within a minute, 10 ms to 50 ms apart
FAST: Mapping[str, Any] = {
    "policy": "always",
    "max_restarts": 3,
    "window": "60s",
    "backoff": "10ms..50ms",
}
#: how long a test waits for a state it expects before it fails
STATE_TIMEOUT = 10.0


def restart(**overrides: Any) -> dict[str, Any]:
    """The ``[restart]`` table of :data:`FAST` with some keys changed."""
    return {**FAST, **overrides}


async def echo(ctx: Context, request: Any) -> Any:
    """The ``echo`` service: answers with its request."""
    return request


def echo_feature(
    app: TestApp,
    name: str,
    *,
    requires: Iterable[str] = (),
    limits: Mapping[str, Any] | None = None,
    restart: Mapping[str, Any] | None = None,
) -> Feature:
    """Declare ``name`` with the small limits, fast restarts and an ``echo`` service."""
    feature = app.feature(
        name,
        requires=requires,
        limits=LIMITS if limits is None else limits,
        restart=FAST if restart is None else restart,
    )
    feature.service("echo")(echo)
    return feature


def echo_app(root: Path, names: Iterable[str], *, strategy: str = "one_for_one") -> TestApp:
    """An app of echo features declared in ``names`` order, none requiring another."""
    app = TestApp(root, strategy=strategy)
    for name in names:
        echo_feature(app, name)
    return app


def pids(sup: Supervisor) -> dict[str, int | None]:
    """The pid of every feature's running container (None when it has none)."""
    return {name: stats.pid for name, stats in sup.statistics().features.items()}


async def poll(check: Callable[[], Awaitable[bool]], what: str, *, limit: float) -> None:
    """Await ``check`` every few milliseconds until it is true; fail after ``limit`` seconds."""
    with trio.move_on_after(limit):
        # the supervisor has no public event for these states: poll, with a deadline
        while not await check():  # noqa: ASYNC110 - see above
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {limit:g}s waiting until {what}")


async def wait_until(
    condition: Callable[[], bool], what: str, *, limit: float = STATE_TIMEOUT
) -> None:
    """Poll ``condition`` until it holds; fail after ``limit`` seconds."""

    async def check() -> bool:
        return condition()

    await poll(check, what, limit=limit)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):  # gone before or while it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    return [int(child) for child in text.split()]


async def wait_state(
    sup: Supervisor, name: str, state: FeatureState, *, limit: float = STATE_TIMEOUT
) -> None:
    """Wait until feature ``name`` is in ``state``."""
    handle = sup.feature(name)
    await wait_until(lambda: handle.state is state, f"{name} is {state.value}", limit=limit)


async def wait_new_pid(
    sup: Supervisor, name: str, old: int | None, *, limit: float = STATE_TIMEOUT
) -> int:
    """Wait until ``name`` runs again in a container other than pid ``old``; return the new pid."""

    def restarted() -> bool:
        stats = sup.feature(name).statistics()
        return stats.state == "running" and stats.pid is not None and stats.pid != old

    await wait_until(restarted, f"{name} runs in a new container", limit=limit)
    pid = sup.feature(name).statistics().pid
    assert pid is not None
    return pid


@dataclass
class Load:
    """Calls ``echo`` on some features in the background, recording latencies and errors.

    ::

        async with trio.open_nursery() as nursery:
            load = Load(sup, ["a", "c"])
            nursery.start_soon(load.run)
            ...  # break something else
            await load.stop()
        load.check()
    """

    sup: Supervisor
    features: list[str]
    pause: float = 0.01
    timeout: float = 5.0
    answered: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: trio.Event = field(default_factory=trio.Event)
    _done: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        try:
            count = 0
            while not self._stop.is_set():
                for name in self.features:
                    count += 1
                    start = trio.current_time()
                    try:
                        reply = await self.sup.call(name, "echo", count, timeout=self.timeout)
                    except Exception as exc:  # every failure is recorded, then asserted
                        self.errors.append(f"{name}: {exc!r}")
                        continue
                    self.latencies.append(trio.current_time() - start)
                    if reply != count:
                        self.errors.append(f"{name}: answered {reply!r} to {count}")
                    self.answered[name] = self.answered.get(name, 0) + 1
                with trio.move_on_after(self.pause):
                    await self._stop.wait()
        finally:
            self._done.set()

    async def more(self, count: int = 3, *, limit: float = STATE_TIMEOUT) -> None:
        """Wait until every loaded feature has answered ``count`` more calls from now on."""
        goal = {name: self.answered.get(name, 0) + count for name in self.features}
        await wait_until(
            lambda: all(self.answered.get(name, 0) >= goal[name] for name in self.features),
            f"{', '.join(self.features)} answered {count} more calls",
            limit=limit,
        )

    async def stop(self) -> None:
        self._stop.set()
        await self._done.wait()

    def check(self, *, minimum: int = 1) -> None:
        """Every call answered correctly, and each feature answered at least ``minimum`` times."""
        assert self.errors == []
        for name in self.features:
            assert self.answered.get(name, 0) >= minimum, (name, self.answered)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)
