"""Live updates: make before break under load, the state handoff and its failures, a dry
run, approval of a widening, the hold queue, and one update at a time. Real containers
throughout; calls come from another feature's container as well as from the host."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import FeatureState, OverloadedError, Supervisor, UpdateError, UpdateRefusedError
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, poll, restart
from tests.capsule.update_helpers import (
    QUICK,
    audit_events,
    count,
    counter,
    counter_app,
    counter_version,
)


async def _counted(sup: Supervisor, goal: int) -> None:
    async def reached() -> bool:
        return int((await count(sup))["count"]) >= goal

    await poll(reached, f"the counter reached {goal}", limit=20)


@pytest.mark.trio
async def test_an_update_under_load_from_a_container_drops_no_call_and_keeps_the_state(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", client=True)
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        old_pid = sup.feature("counter").statistics().pid
        outcome: dict[str, Any] = {}

        async def run_pump() -> None:
            # until stopped: however long the new version takes to start (a loaded machine),
            # the pump is still at work after the switch
            request = {"n": 1_000_000, "pause": 0.002}
            outcome.update(await sup.call("client", "pump", request, timeout=120))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            await _counted(sup, 50)
            report = await sup.update("counter", app.bundle(v2))
            during = await count(sup)
            await _counted(sup, during["count"] + 200)
            await sup.call("client", "stop")
        assert during["count"] + 200 <= outcome["done"]  # calls went on after the switch
        assert outcome["errors"] == []
        # every add reached one version or the other, and the count went across
        assert await count(sup) == {"count": outcome["done"], "version": "2.0.0"}
        assert (report.from_version, report.to_version) == ("1.0.0", "2.0.0")
        assert report.state_bytes is not None
        stats = sup.feature("counter").statistics()
        assert stats.version == "2.0.0"
        assert stats.pid != old_pid
    events = audit_events(app.root / "audit.jsonl", "update-")
    assert [e["event"] for e in events][:2] == ["update-start", "update-switch"]
    assert events[1]["pause_ms"] >= 0
    assert events[1]["state_bytes"] == report.state_bytes
    assert capsule.testing.leftovers() == []


def _store(feature: Feature, blob: dict[str, bytes]) -> None:
    @feature.service("fill")
    async def _fill(ctx: Context, size: int) -> str:
        blob["data"] = os.urandom(size)
        return hashlib.sha256(blob["data"]).hexdigest()

    @feature.service("digest")
    async def _digest(ctx: Context, request: Any) -> list[Any]:
        return [len(blob["data"]), hashlib.sha256(blob["data"]).hexdigest()]

    @feature.export_state
    async def _export(ctx: Context) -> bytes:
        return blob["data"]

    @feature.import_state
    async def _import(ctx: Context, from_version: str, data: bytes) -> None:
        blob["data"] = data


def _store_app(root: Path, update: dict[str, Any] | None = None) -> tuple[TestApp, Feature]:
    app = TestApp(root)
    policy = {"update": {**QUICK, **(update or {})}}
    _store(app.feature("store", limits=LIMITS, restart=restart(), policy=policy), {"data": b""})
    v2 = app.version("store", "2.0.0")
    _store(v2, {"data": b""})
    return app, v2


@pytest.mark.trio
async def test_state_larger_than_a_frame_arrives_whole(tmp_path: Path) -> None:
    app, v2 = _store_app(tmp_path / "app")
    async with app.open() as sup:
        digest = await sup.call("store", "fill", 3 * 1024 * 1024 + 5)
        report = await sup.update("store", app.bundle(v2))
        assert report.state_bytes == 3 * 1024 * 1024 + 5
        assert await sup.call("store", "digest") == [report.state_bytes, digest]
        assert sup.feature("store").manifest.version == "2.0.0"


@pytest.mark.trio
async def test_state_over_state_max_fails_the_update_and_the_old_version_serves_on(
    tmp_path: Path,
) -> None:
    app, v2 = _store_app(tmp_path / "app", {"state_max": "64KiB"})
    async with app.open() as sup:
        pid = sup.feature("store").statistics().pid
        digest = await sup.call("store", "fill", 65 * 1024)
        with pytest.raises(UpdateError, match=r"state_max") as caught:
            await sup.update("store", app.bundle(v2))
        assert "1.0.0 serves on" in str(caught.value)
        assert await sup.call("store", "digest") == [65 * 1024, digest]
        stats = sup.feature("store").statistics()
        assert (stats.version, stats.pid, stats.update) == ("1.0.0", pid, None)
        assert sup.statistics().containers_started == 2  # the new one came and went
    failed = audit_events(app.root / "audit.jsonl", "update-failed")
    assert len(failed) == 1
    assert "state_max" in failed[0]["reason"]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_import_state_raising_stops_the_new_version_and_the_old_one_serves_on(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app")
    v2 = app.version("counter", "2.0.0")

    @v2.import_state
    async def _refuse(ctx: Context, from_version: str, data: bytes) -> None:
        raise ValueError(f"cannot read the state of {from_version}")

    async with app.open() as sup:
        for _ in range(3):
            await sup.call("counter", "add")
        pid = sup.feature("counter").statistics().pid
        with pytest.raises(UpdateError, match=r"import_state .*cannot read the state of 1\.0\.0"):
            await sup.update("counter", app.bundle(v2))
        assert await count(sup) == {"count": 3, "version": "1.0.0"}
        assert sup.feature("counter").statistics().pid == pid
        await sup.call("counter", "add")  # it takes calls again at once
    assert [e["event"] for e in audit_events(app.root / "audit.jsonl", "update-")] == [
        "update-start",
        "update-failed",
    ]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_new_version_that_does_not_start_leaves_the_old_one_untouched(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app")
    v2 = app.version("counter", "2.0.0")

    @v2.on_start
    async def _fail(ctx: Context) -> None:
        raise RuntimeError("missing configuration")

    async with app.open() as sup:
        await sup.call("counter", "add")
        with pytest.raises(UpdateError, match=r"did not start.*missing configuration"):
            await sup.update("counter", app.bundle(v2))
        assert await count(sup) == {"count": 1, "version": "1.0.0"}
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_dry_run_shows_the_diff_and_the_steps_and_starts_nothing(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app")
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        started = sup.statistics().containers_started
        report = await sup.update("counter", app.bundle(v2), dry_run=True)
        assert report.action == "dry-run"
        assert (report.from_version, report.to_version) == ("1.0.0", "2.0.0")
        assert not report.widens
        assert any("probation 1s" in step for step in report.steps), report.steps
        assert any("keep 1.0.0 frozen for 2s" in step for step in report.steps), report.steps
        assert sup.statistics().containers_started == started
        assert sup.feature("counter").manifest.version == "1.0.0"


def _widening_app(root: Path) -> tuple[TestApp, Feature, Feature]:
    """``counter`` may be granted a call to ``other.echo`` (its 1.0.0 does not ask for it);
    2.0.0 asks for it, 3.0.0 asks for a call the app never approves."""
    app = counter_app(root)
    app._specs["counter"].approve = {"call": ["other.echo"]}
    other = app.feature("other", limits=LIMITS)

    @other.service("echo")
    async def _echo(ctx: Context, request: Any) -> Any:
        return request

    v2 = app.version("counter", "2.0.0", access={"call": ["other.echo"]})
    counter(v2, "2.0.0")

    @v2.service("relay")
    async def _relay(ctx: Context, request: Any) -> Any:
        return await ctx.call("other", "echo", request)

    v3 = app.version("counter", "3.0.0", access={"call": ["other.fault"]})
    counter(v3, "3.0.0")
    return app, v2, v3


@pytest.mark.trio
async def test_a_widening_update_needs_approval_and_an_unapproved_one_is_refused(
    tmp_path: Path,
) -> None:
    app, v2, v3 = _widening_app(tmp_path / "app")
    async with app.open() as sup:
        dry = await sup.update("counter", app.bundle(v2), dry_run=True)
        assert dry.widens
        assert "+ icc:call:other.echo" in dry.diff
        assert dry.steps[0].startswith("needs approval")
        with pytest.raises(UpdateError, match=r"approve") as caught:
            await sup.update("counter", app.bundle(v2))
        assert "+ icc:call:other.echo" in str(caught.value)
        with pytest.raises(UpdateRefusedError, match=r"capsule\.toml") as refused:
            await sup.update("counter", app.bundle(v3), approve=True)
        assert refused.value.feature == "counter"
        assert sup.feature("counter").manifest.version == "1.0.0"
        report = await sup.update("counter", app.bundle(v2), approve=True)
        assert report.widens
        assert await sup.call("counter", "relay", "hi") == "hi"  # under its own new token


@pytest.mark.trio
async def test_a_second_update_during_probation_is_refused_clearly(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s"})
    v2 = counter_version(app, "2.0.0")
    v3 = counter_version(app, "3.0.0")
    async with app.open() as sup:
        await sup.update("counter", app.bundle(v2))
        assert sup.feature("counter").statistics().update == "1.0.0 -> 2.0.0 (probation)"
        with pytest.raises(UpdateError, match=r"an update \(1\.0\.0 -> 2\.0\.0\) is under way"):
            await sup.update("counter", app.bundle(v3))
        assert (await count(sup))["version"] == "2.0.0"
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_updating_a_stopped_feature_records_the_version_it_starts_with(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app")
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        await sup.stop("counter")
        report = await sup.update("counter", app.bundle(v2))
        assert report.cold
        assert sup.feature("counter").state is FeatureState.STOPPED
        await sup.start("counter")
        assert await count(sup) == {"count": 0, "version": "2.0.0"}


def _slow_app(root: Path, update: dict[str, Any]) -> tuple[TestApp, Feature]:
    app = counter_app(root, update=update)
    v1 = app._specs["counter"].feature

    @v1.service("slow")
    async def _slow(ctx: Context, seconds: float) -> str:
        await trio.sleep(seconds)
        return "done on 1.0.0"

    v2 = counter_version(app, "2.0.0")
    return app, v2


@pytest.mark.trio
async def test_calls_held_past_the_queue_are_refused_as_overloaded(tmp_path: Path) -> None:
    app, v2 = _slow_app(tmp_path / "app", {"queue": 2, "drain": "5s"})
    async with app.open() as sup:
        results: list[str] = []

        async def add() -> None:
            try:
                await sup.call("counter", "add")
                results.append("ok")
            except OverloadedError as exc:
                results.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.call, "counter", "slow", 1.0)  # keeps the drain going
            await poll(_in_flight(sup), "the slow call is in flight", limit=5)
            nursery.start_soon(sup.update, "counter", app.bundle(v2))
            await poll(_holding(sup), "calls are held", limit=10)
            for _ in range(5):
                nursery.start_soon(add)
        assert results.count("ok") == 2
        refused = [r for r in results if r != "ok"]
        assert len(refused) == 3
        assert "update.queue" in refused[0]
        assert (await count(sup))["count"] == 2


def _in_flight(sup: Supervisor) -> Any:
    async def check() -> bool:
        return sup.feature("counter").statistics().calls_in_flight > 0

    return check


def _holding(sup: Supervisor) -> Any:
    async def check() -> bool:
        return (sup.feature("counter").statistics().update or "").endswith("(draining)")

    return check


@pytest.mark.trio
async def test_a_call_past_the_drain_time_finishes_on_the_old_version(tmp_path: Path) -> None:
    app, v2 = _slow_app(tmp_path / "app", {"drain": "200ms"})
    async with app.open() as sup:
        async with trio.open_nursery() as nursery:
            answer: list[str] = []

            async def slow() -> None:
                answer.append(await sup.call("counter", "slow", 1.5))

            nursery.start_soon(slow)
            await poll(_in_flight(sup), "the slow call is in flight", limit=5)
            report = await sup.update("counter", app.bundle(v2))
            assert report.stragglers == 1
            assert (await count(sup))["version"] == "2.0.0"  # new calls went to 2.0.0
        assert answer == ["done on 1.0.0"]


def _same_count(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return bool(before["count"] == after["count"])


@pytest.mark.trio
async def test_check_live_update_passes_an_update_that_keeps_state_and_fails_one_that_loses_it(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app")
    keeps = counter_version(app, "2.0.0")
    loses = app.version("counter", "3.0.0")
    counter(loses, "3.0.0", handoff=False)
    async with app.open() as sup:
        for _ in range(5):
            await sup.call("counter", "add")
        report = await capsule.testing.check_live_update(
            sup, "counter", app.bundle(keeps), service="get", state="get", same=_same_count
        )
        assert report.to_version == "2.0.0"
        await sup._updates.wait_settled("counter")
        with pytest.raises(AssertionError, match=r"the state changed over the update"):
            await capsule.testing.check_live_update(
                sup, "counter", app.bundle(loses), service="get", state="get", same=_same_count
            )
        assert await count(sup) == {"count": 0, "version": "3.0.0"}


@pytest.mark.trio
async def test_an_app_closing_during_an_update_leaves_nothing_behind(tmp_path: Path) -> None:
    app, v2 = _slow_app(tmp_path / "app", {"drain": "30s"})
    errors: list[str] = []

    async def update(sup: Supervisor) -> None:
        try:
            await sup.update("counter", app.bundle(v2))
        except UpdateError as exc:
            errors.append(str(exc))

    async def slow(sup: Supervisor) -> None:
        try:
            await sup.call("counter", "slow", 60.0, timeout=60)
        except Exception as exc:  # its container is stopped with the app: expected
            errors.append(type(exc).__name__)

    async with trio.open_nursery() as outer, app.open() as sup:
        outer.start_soon(slow, sup)
        await poll(_in_flight(sup), "the slow call is in flight", limit=5)
        outer.start_soon(update, sup)
        await poll(_holding(sup), "the update drains the old version", limit=10)
    assert "feature 'counter': the app shut down during the update; nothing changed" in errors
    (failed,) = audit_events(app.root / "audit.jsonl", "update-failed")
    assert failed["reason"] == "the app shut down"
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_two_updates_started_at_once_run_one_and_refuse_the_other(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s"})
    v2 = counter_version(app, "2.0.0")
    v3 = counter_version(app, "3.0.0")
    async with app.open() as sup:
        outcomes: list[str] = []

        async def update(bundle: Path) -> None:
            try:
                report = await sup.update("counter", bundle)
                outcomes.append(report.to_version)
            except UpdateError as exc:
                outcomes.append("refused: under way" if "under way" in str(exc) else str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(update, app.bundle(v2))
            nursery.start_soon(update, app.bundle(v3))
        assert sorted(outcomes) in (
            ["2.0.0", "refused: under way"],
            ["3.0.0", "refused: under way"],
        )
        assert sup.statistics().containers_started == 2  # one new container, not two
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_updating_a_crashed_feature_restarts_it_as_the_new_version(tmp_path: Path) -> None:
    app = TestApp(tmp_path / "app")
    slow_restart = restart(backoff="500ms..500ms")
    counter(app.feature("counter", limits=LIMITS, restart=slow_restart), "1.0.0")
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        await capsule.testing.crash(sup, "counter")
        assert sup.feature("counter").state is FeatureState.RESTARTING
        report = await sup.update("counter", app.bundle(v2))
        assert report.cold
        assert await count(sup) == {"count": 0, "version": "2.0.0"}  # waited for the restart
