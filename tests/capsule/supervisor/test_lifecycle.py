"""Feature lifecycle with real containers: start order, start/stop/restart, readiness, statistics.

Every test opens a real supervisor and checks at the end that it left nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import (
    FeatureCrashedError,
    FeatureError,
    FeatureStartError,
    FeatureState,
    FeatureUnavailableError,
    RemoteError,
)
from capsule._container._feature import Context
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import (
    LIMITS,
    Load,
    alive,
    echo_app,
    echo_feature,
    pids,
    restart,
    wait_new_pid,
    wait_state,
)

MiB = 1 << 20
#: how long a call to a stopped or quarantined feature may take to fail "at once"
AT_ONCE = 0.1


@pytest.mark.trio
async def test_features_start_in_dependency_order(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    # declared against their dependency order on purpose
    echo_feature(app, "web", requires=["api", "cache"])
    echo_feature(app, "api", requires=["db"])
    echo_feature(app, "cache")
    db = echo_feature(app, "db")

    @db.on_start
    async def _slow_start(ctx: Context) -> None:
        await trio.sleep(0.3)

    with trio.fail_after(20):
        async with app.open() as sup:
            order = list(sup.features())
            assert set(order) == {"web", "api", "cache", "db"}
            assert order.index("db") < order.index("api") < order.index("web")
            assert order.index("cache") < order.index("web")
            assert [handle.index for handle in sup.features().values()] == [0, 1, 2, 3]
            assert list(sup.statistics().features) == order

            started = {}
            for name, handle in sup.features().items():
                assert handle.state is FeatureState.RUNNING
                assert handle.instance is not None
                started[name] = handle.instance.started_at
            # each container was spawned only after the one before it was ready: api's
            # spawn waited for db's slow on_start hook
            assert sorted(started, key=started.__getitem__) == order
            assert started["api"] - started["db"] >= 0.3
            for name in order:
                assert await sup.call(name, "echo", name) == name
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_stop_start_and_restart_one_feature_while_the_others_answer(tmp_path: Path) -> None:
    app = echo_app(tmp_path, ["a", "b", "c"])
    with trio.fail_after(30):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["a", "c"])
            nursery.start_soon(load.run)
            b = sup.feature("b")

            await sup.stop("b")
            assert b.state is FeatureState.STOPPED
            assert b.statistics().pid is None
            assert b.statistics().state == "stopped"
            start = trio.current_time()
            with pytest.raises(FeatureUnavailableError, match="is stopped") as stopped:
                await sup.call("b", "echo", 1)
            assert trio.current_time() - start < AT_ONCE
            assert stopped.value.feature == "b"
            await sup.stop("b")  # stopping a stopped feature is a no-op
            assert b.state is FeatureState.STOPPED
            await load.more(3)

            await sup.start("b")
            assert b.state is FeatureState.RUNNING
            started = pids(sup)["b"]
            assert started not in (None, before["b"])
            assert await sup.call("b", "echo", 2) == 2
            await sup.start("b")  # starting a running feature is a no-op
            assert pids(sup)["b"] == started
            await load.more(3)

            await sup.restart("b")
            assert b.state is FeatureState.RUNNING
            restarted = pids(sup)["b"]
            assert restarted not in (None, before["b"], started)
            assert await sup.call("b", "echo", 3) == 3
            # restarts asked for are not counted against the restart limit
            assert b.statistics().restarts == 0

            await load.more(3)
            await load.stop()
            after = pids(sup)
            assert (after["a"], after["c"]) == (before["a"], before["c"])
        load.check(minimum=9)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_stopped_feature_fails_calls_at_once_until_started(tmp_path: Path) -> None:
    app = echo_app(tmp_path, ["a"])
    with trio.fail_after(20):
        async with app.open(call_timeout=30) as sup:
            await sup.stop("a")
            for attempt in range(3):
                start = trio.current_time()
                with pytest.raises(FeatureUnavailableError):
                    await sup.call("a", "echo", attempt)
                assert trio.current_time() - start < AT_ONCE
            start = trio.current_time()
            with pytest.raises(FeatureUnavailableError):
                await sup.feature("a").wait_ready(10)
            assert trio.current_time() - start < AT_ONCE
            await sup.start("a")
            assert await sup.call("a", "echo", "back") == "back"
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_wait_ready(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    slow = echo_feature(app, "slow", restart=restart(backoff="10ms..20ms"))

    @slow.on_start
    async def _slow_start(ctx: Context) -> None:
        await trio.sleep(0.4)

    with trio.fail_after(20):
        async with app.open() as sup:
            handle = sup.feature("slow")
            with trio.fail_after(AT_ONCE):
                await handle.wait_ready(1)  # already running: returns at once
            with pytest.raises(FeatureCrashedError):
                await sup.call("slow", "fault", {"kind": "exit", "code": 9})
            assert handle.state is FeatureState.RESTARTING
            with pytest.raises(TimeoutError):
                await handle.wait_ready(0.05)
            start = trio.current_time()
            await handle.wait_ready(10)
            assert handle.state is FeatureState.RUNNING
            assert trio.current_time() - start >= 0.3  # it waited for the on_start hook
            assert await sup.call("slow", "echo", 1) == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_statistics(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    app.feature("quiet", version="2.1.0", limits=LIMITS, restart=restart()).service("echo")(
        _echo_pid
    )
    echo_feature(app, "other")
    with trio.fail_after(20):
        async with app.open() as sup:
            stats = sup.statistics()
            assert stats.app == "testapp"
            assert stats.isolation in {"full", "partial", "none"}
            assert stats.containers_started == 2
            assert stats.restarts == 0
            assert stats.quarantined == ()

            for _ in range(3):
                assert await sup.call("quiet", "echo") == 1  # pid 1 of its own namespace
            quiet = sup.feature("quiet").statistics()
            assert quiet.name == "quiet"
            assert quiet.version == "2.1.0"
            assert quiet.state == "running"
            assert quiet.pid is not None
            assert alive(quiet.pid)
            assert quiet.pid != os.getpid()
            assert quiet.restarts == 0
            assert quiet.calls_total == 3
            assert quiet.calls_in_flight == 0
            assert quiet.uptime is not None
            assert quiet.uptime > 0
            assert quiet.last_exit is None
            assert quiet.oom_kills == 0
            if stats.cgroups != "none":
                assert quiet.memory_limit == 64 * MiB
                assert quiet.memory_current is not None
                assert 0 < quiet.memory_current < quiet.memory_limit
                assert quiet.pids_current is not None
                assert 2 <= quiet.pids_current <= 16  # the outer and inner processes
                assert quiet.cpu_usage_ns is not None
                assert quiet.cpu_usage_ns > 0
                # the figures are the container's own cgroup: holding 24 MiB shows there,
                # and only there
                other_before = sup.feature("other").statistics().memory_current
                assert other_before is not None
                held = await sup.call("quiet", "fault", {"kind": "balloon", "bytes": 24 * MiB})
                assert held == {"held": 24 * MiB}
                grown = sup.feature("quiet").statistics().memory_current
                assert grown is not None
                assert grown - quiet.memory_current >= 20 * MiB
                other_after = sup.feature("other").statistics().memory_current
                assert other_after is not None
                assert abs(other_after - other_before) < 8 * MiB

            old_pid = quiet.pid
            with pytest.raises(FeatureCrashedError):
                await sup.call("quiet", "fault", {"kind": "exit", "code": 5})
            ended = sup.feature("quiet").statistics()
            assert ended.state == "restarting"
            assert ended.pid is None
            assert ended.uptime is None
            assert ended.last_exit == "exited with code 5"
            assert ended.restarts == 1

            await wait_new_pid(sup, "quiet", old_pid)
            back = sup.feature("quiet").statistics()
            assert back.state == "running"
            assert back.restarts == 1
            assert back.calls_total == 0  # counted per container
            assert back.last_exit == "exited with code 5"
            assert sup.statistics().restarts == 1
            assert sup.statistics().containers_started == 3

            await sup.stop("quiet")
            stopped = sup.feature("quiet").statistics()
            assert stopped.state == "stopped"
            assert stopped.pid is None
            assert stopped.uptime is None
            assert stopped.last_exit == "exited with code 0"
    assert capsule.testing.leftovers() == []


async def _echo_pid(ctx: Context, request: Any) -> int:
    return os.getpid()


@pytest.mark.trio
async def test_unknown_feature_or_service_is_a_feature_error(tmp_path: Path) -> None:
    app = echo_app(tmp_path, ["a"])
    with trio.fail_after(20):
        async with app.open() as sup:
            for attempt in (
                lambda: sup.call("nope", "echo", 1),
                lambda: sup.start("nope"),
                lambda: sup.stop("nope"),
                lambda: sup.restart("nope"),
            ):
                with pytest.raises(FeatureError, match="'nope'") as unknown:
                    await attempt()
                assert type(unknown.value) is FeatureError
                assert unknown.value.feature == "nope"
                assert "testapp" in str(unknown.value)
            with pytest.raises(FeatureError, match="not part of app"):
                sup.feature("nope")

            with pytest.raises(FeatureError, match="has no service 'nope'") as no_service:
                await sup.call("a", "nope", 1)
            assert type(no_service.value) is FeatureError
            assert no_service.value.feature == "a"
            assert "echo" in str(no_service.value)
            # refused before anything reached the container
            assert sup.feature("a").statistics().calls_total == 0
            assert await sup.call("a", "echo", 1) == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_on_start_failure_is_retried_then_quarantined(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "good")
    bad = echo_feature(app, "bad", restart=restart(max_restarts=2))

    @bad.on_start
    async def _fail(ctx: Context) -> None:
        raise RuntimeError("no configuration found")

    with trio.fail_after(30):
        async with app.open() as sup, trio.open_nursery() as nursery:
            load = Load(sup, ["good"])
            nursery.start_soon(load.run)
            await wait_state(sup, "bad", FeatureState.QUARANTINED)
            stats = sup.statistics()
            assert stats.quarantined == ("bad",)
            assert stats.containers_started == 1  # only good ever became ready
            assert stats.features["bad"].state == "quarantined"
            assert stats.features["bad"].restarts == 2
            assert stats.features["bad"].pid is None
            assert "no configuration found" in (stats.features["bad"].last_exit or "")
            assert stats.features["good"].state == "running"

            start = trio.current_time()
            with pytest.raises(FeatureUnavailableError, match="quarantined"):
                await sup.call("bad", "echo", 1)
            assert trio.current_time() - start < AT_ONCE

            # an explicit start tries again and reports why it failed
            with pytest.raises(FeatureStartError, match="no configuration found") as failed:
                await sup.start("bad")
            assert isinstance(failed.value.__cause__, RemoteError)
            assert failed.value.__cause__.remote_type == "RuntimeError"
            await wait_state(sup, "bad", FeatureState.QUARANTINED)

            await load.more(3)
            await load.stop()
        load.check()
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_on_stop_hooks_run_on_stop(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    tidy = echo_feature(app, "tidy")
    echo_feature(app, "other")

    @tidy.on_stop
    async def _slow_tidy(ctx: Context) -> None:
        await trio.sleep(0.5)
        print("tidied up", flush=True)  # noqa: T201 - the container's stdout is its log

    with trio.fail_after(20):
        async with app.open(stop_timeout=5) as sup:
            instance = sup.feature("tidy").instance
            assert instance is not None
            start = trio.current_time()
            await sup.stop("tidy")
            took = trio.current_time() - start
            # stop waited for the hook, which finished well within the grace period
            assert 0.45 <= took < 3, took
            assert "tidied up" in instance.logs
            assert sup.feature("tidy").last_exit == "exited with code 0"

            start = trio.current_time()
            await sup.stop("other")
            assert trio.current_time() - start < 0.4  # without a slow hook it is quick
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_cancelling_the_block_still_stops_every_feature_promptly(tmp_path: Path) -> None:
    """A cancel scope around ``open_supervisor`` that is cancelled while the app runs still
    stops the features with their stop message (no grace period waited out, no SIGKILL)
    and leaves nothing behind: the supervisor's own services outlive the cancellation
    until the app is down."""
    app = echo_app(tmp_path, ["a", "b", "c"])
    with trio.CancelScope() as scope:
        async with app.open() as sup:
            assert await sup.call("a", "echo", 1) == 1
            scope.cancel()
            cancelled = trio.current_time()
            await trio.sleep_forever()
    took = trio.current_time() - cancelled
    assert took < 3.0, f"closing after a cancel took {took:.1f}s"
    assert capsule.testing.leftovers() == []
