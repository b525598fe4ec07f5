"""Restart strategies, restart intensity and restart policies, with real crashing containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import FeatureCrashedError, FeatureState, FeatureUnavailableError
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import (
    Load,
    echo_app,
    echo_feature,
    pids,
    restart,
    wait_new_pid,
    wait_until,
)

#: four times the longest backoff of the fast restarts: long enough to see a restart begin
QUIET = 0.2
AT_ONCE = 0.1


async def _crash(sup: capsule.Supervisor, name: str, fault: dict[str, Any] | None = None) -> None:
    with pytest.raises(FeatureCrashedError):
        await sup.call(name, "fault", fault or {"kind": "exit", "code": 3})


async def _stays(sup: capsule.Supervisor, name: str, state: FeatureState) -> None:
    """``name`` is in ``state`` and does not leave it for a while."""
    handle = sup.feature(name)
    assert handle.state is state
    with trio.move_on_after(QUIET):
        await wait_until(lambda: handle.state is not state, f"{name} leaves {state.value}")
        raise AssertionError(f"{name} left {state.value}: now {handle.state.value}")


@pytest.mark.trio
@pytest.mark.parametrize(
    ("strategy", "restarted", "untouched"),
    [
        ("one_for_one", ["b"], ["a", "c", "d"]),
        ("one_for_all", ["a", "b", "c", "d"], []),
        ("rest_for_one", ["b", "c", "d"], ["a"]),
    ],
)
async def test_strategy_decides_which_features_restart(
    tmp_path: Path, strategy: str, restarted: list[str], untouched: list[str]
) -> None:
    app = echo_app(tmp_path, ["a", "b", "c", "d"], strategy=strategy)
    with trio.fail_after(30):
        async with app.open() as sup, trio.open_nursery() as nursery:
            assert list(sup.features()) == ["a", "b", "c", "d"]
            before = pids(sup)
            load = Load(sup, untouched)
            if untouched:
                nursery.start_soon(load.run)
                await load.more(1)
            await _crash(sup, "b")
            for name in restarted:
                await wait_new_pid(sup, name, before[name])
            after = pids(sup)
            for name in untouched:
                assert after[name] == before[name], name
            for name in ("a", "b", "c", "d"):
                assert sup.feature(name).state is FeatureState.RUNNING
                assert await sup.call(name, "echo", name) == name
            # only the feature that failed is charged with a restart
            assert sup.feature("b").statistics().restarts == 1
            assert sup.statistics().restarts == 1
            if untouched:
                await load.more(3)
                await load.stop()
                load.check()
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_rest_for_one_restarts_in_start_order(tmp_path: Path) -> None:
    """The features after the failed one are those after it in dependency order."""
    app = TestApp(tmp_path, strategy="rest_for_one")
    echo_feature(app, "top", requires=["mid"])
    echo_feature(app, "mid", requires=["base"])
    echo_feature(app, "base")
    echo_feature(app, "side")
    with trio.fail_after(30):
        async with app.open() as sup:
            order = list(sup.features())
            assert order.index("base") < order.index("mid") < order.index("top")
            before = pids(sup)
            await _crash(sup, "mid")
            after_mid = order[order.index("mid") :]
            for name in after_mid:
                await wait_new_pid(sup, name, before[name])
            started = {n: sup.feature(n).instance.started_at for n in after_mid}  # type: ignore[union-attr]
            assert sorted(started, key=started.__getitem__) == after_mid
            after = pids(sup)
            for name in order[: order.index("mid")]:
                assert after[name] == before[name], name
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_too_many_restarts_quarantine_the_feature(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "steady")
    echo_feature(app, "flaky", restart=restart(max_restarts=2))
    with trio.fail_after(30):
        async with app.open() as sup, trio.open_nursery() as nursery:
            load = Load(sup, ["steady"])
            nursery.start_soon(load.run)
            flaky = sup.feature("flaky")
            for count in (1, 2):
                pid = flaky.statistics().pid
                await _crash(sup, "flaky")
                await wait_new_pid(sup, "flaky", pid)
                assert flaky.statistics().restarts == count
            await _crash(sup, "flaky", {"kind": "exit", "code": 42})
            # given up at once: no restart scheduled, calls refused without waiting
            assert flaky.state is FeatureState.QUARANTINED
            stats = sup.statistics()
            assert stats.quarantined == ("flaky",)
            assert stats.features["flaky"].state == "quarantined"
            assert stats.features["flaky"].restarts == 2
            assert stats.features["flaky"].pid is None
            for attempt in range(3):
                start = trio.current_time()
                with pytest.raises(FeatureUnavailableError, match="quarantined") as refused:
                    await sup.call("flaky", "echo", attempt, timeout=10)
                assert trio.current_time() - start < AT_ONCE
                assert "exited with code 42" in str(refused.value)
            with pytest.raises(FeatureUnavailableError):
                await flaky.wait_ready(10)
            await _stays(sup, "flaky", FeatureState.QUARANTINED)
            await load.more(3)

            # an explicit start gives it a fresh restart budget
            await sup.start("flaky")
            assert flaky.state is FeatureState.RUNNING
            assert sup.statistics().quarantined == ()
            assert await sup.call("flaky", "echo", 1) == 1
            pid = flaky.statistics().pid
            await _crash(sup, "flaky")
            await wait_new_pid(sup, "flaky", pid)
            await load.more(3)
            await load.stop()
        load.check()
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
@pytest.mark.parametrize(
    ("policy", "fault", "restarts"),
    [
        ("never", {"kind": "exit", "code": 3}, False),
        ("never", {"kind": "exit", "code": 0}, False),
        ("never", {"kind": "segfault"}, False),
        ("on-failure", {"kind": "exit", "code": 0}, False),
        ("on-failure", {"kind": "exit", "code": 3}, True),
        ("on-failure", {"kind": "segfault"}, True),
        ("always", {"kind": "exit", "code": 0}, True),
        ("always", {"kind": "exit", "code": 3}, True),
    ],
)
async def test_restart_policy(
    tmp_path: Path, policy: str, fault: dict[str, Any], restarts: bool
) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "other")
    echo_feature(app, "subject", restart=restart(policy=policy))
    with trio.fail_after(20):
        async with app.open() as sup:
            before = pids(sup)
            await _crash(sup, "subject", fault)
            subject = sup.feature("subject")
            if restarts:
                await wait_new_pid(sup, "subject", before["subject"])
                assert subject.statistics().restarts == 1
                assert await sup.call("subject", "echo", 1) == 1
            else:
                await _stays(sup, "subject", FeatureState.STOPPED)
                assert subject.statistics().restarts == 0
                assert subject.statistics().pid is None
                start = trio.current_time()
                with pytest.raises(FeatureUnavailableError, match="is stopped"):
                    await sup.call("subject", "echo", 1)
                assert trio.current_time() - start < AT_ONCE
                assert sup.statistics().containers_started == 2
                # it stays stopped until asked, and then starts normally
                await sup.start("subject")
                assert await sup.call("subject", "echo", 2) == 2
            assert pids(sup)["other"] == before["other"]
            assert await sup.call("other", "echo", 3) == 3
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_group_restart_leaves_stopped_features_stopped(tmp_path: Path) -> None:
    app = echo_app(tmp_path, ["a", "b", "c"], strategy="one_for_all")
    with trio.fail_after(20):
        async with app.open() as sup:
            await sup.stop("c")
            before = pids(sup)
            await _crash(sup, "b")
            for name in ("a", "b"):
                await wait_new_pid(sup, name, before[name])
            await _stays(sup, "c", FeatureState.STOPPED)
            with pytest.raises(FeatureUnavailableError):
                await sup.call("c", "echo", 1)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_stopping_a_feature_during_its_backoff_cancels_the_restart(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "subject", restart=restart(backoff="100ms..150ms"))
    with trio.fail_after(20):
        async with app.open() as sup:
            await _crash(sup, "subject")
            assert sup.feature("subject").state is FeatureState.RESTARTING
            await sup.stop("subject")
            await _stays(sup, "subject", FeatureState.STOPPED)
            assert sup.statistics().containers_started == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_closing_during_a_backoff_or_a_quarantine_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "waiting", restart=restart(backoff="5s..10s"))
    echo_feature(app, "given-up", restart=restart(max_restarts=0))
    echo_feature(app, "running")
    with trio.fail_after(20):
        async with app.open() as sup:
            await _crash(sup, "waiting")
            await _crash(sup, "given-up")
            assert sup.feature("waiting").state is FeatureState.RESTARTING
            assert sup.feature("given-up").state is FeatureState.QUARANTINED
            closing = trio.current_time()
        assert trio.current_time() - closing < 2  # the pending restart did not hold it up
    assert capsule.testing.leftovers() == []
