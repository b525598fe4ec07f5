"""Live updates that go wrong after the switch: a new version that crashes, errs or slows
down on probation is rolled back at once; a rollback by hand thaws the old version; a
forward_only one is quarantined instead; and update/rollback cycles leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import (
    FeatureCrashedError,
    FeatureState,
    FeatureUnavailableError,
    RemoteError,
    Supervisor,
    UpdateError,
)
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import wait_until
from tests.capsule.update_helpers import audit_events, count, counter, counter_app, counter_version


def _crashing(app: TestApp, version: str = "2.0.0", **options: Any) -> Feature:
    """A version whose ``add`` ends its container."""
    feature = app.version("counter", version, **options)
    counter(feature, version)
    del feature.services["add"]

    @feature.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        os._exit(3)

    return feature


async def _adds(sup: Supervisor, n: int) -> list[str]:
    """Call ``add`` ``n`` times; what each call came to (its value, or its error's type)."""
    outcomes = []
    for _ in range(n):
        try:
            outcomes.append(str(await sup.call("counter", "add", timeout=10)))
        except (FeatureCrashedError, RemoteError, FeatureUnavailableError) as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


@pytest.mark.trio
async def test_a_new_version_crashing_on_its_first_call_is_rolled_back_at_once(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update={"crashes": 1, "probation": "30s"})
    v2 = _crashing(app)
    async with app.open() as sup:
        old_pid = sup.feature("counter").statistics().pid
        assert await _adds(sup, 3) == ["1", "2", "3"]
        await sup.update("counter", app.bundle(v2))
        # the call in flight on the crashed container fails; none after it does
        assert await _adds(sup, 5) == ["FeatureCrashedError", "4", "5", "6", "7"]
        await wait_until(lambda: _rolled_back(sup), "the rollback is over")
        assert sup.feature("counter").statistics().pid == old_pid
    rollback = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert len(rollback) == 1
    assert rollback[0]["reason"].startswith(
        "1 crash(es) during probation (last: exited with code 3"
    )
    assert rollback[0]["crashes"] == 1
    assert rollback[0]["pause_ms"] >= 0
    assert rollback[0]["decision"] == "fail"
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_the_default_two_crashes_restart_the_new_version_once_then_roll_back(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s"})
    v2 = _crashing(app)
    async with app.open() as sup:
        await sup.update("counter", app.bundle(v2))
        outcomes = await _adds(sup, 4)
        assert outcomes == ["FeatureCrashedError", "FeatureCrashedError", "1", "2"]
        assert sup.feature("counter").manifest.version == "1.0.0"
    (rollback,) = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert rollback["crashes"] == 2


@pytest.mark.trio
async def test_an_error_rate_over_min_calls_rolls_back(tmp_path: Path) -> None:
    policy = {"probation": "30s", "min_calls": 5, "error_rate": 0.5}
    app = counter_app(tmp_path / "app", update=policy)
    v2 = counter_version(app, "2.0.0")
    del v2.services["add"]

    @v2.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        raise ValueError("broken")

    async with app.open() as sup:
        await sup.update("counter", app.bundle(v2))
        assert await _adds(sup, 4) == ["RemoteError"] * 4
        await trio.sleep(0.3)  # four failures are under min_calls: no verdict yet
        assert sup.feature("counter").manifest.version == "2.0.0"
        assert await _adds(sup, 1) == ["RemoteError"]
        await wait_until(lambda: _rolled_back(sup), "it rolled back", limit=5)
        assert await _adds(sup, 2) == ["1", "2"]
    (rollback,) = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert rollback["reason"] == (
        "5 of 5 calls failed (100%, the limit is 50% over at least 5 calls)"
    )
    assert (rollback["calls"], rollback["failures"]) == (5, 5)


@pytest.mark.trio
async def test_a_slow_new_version_is_rolled_back_on_its_p99(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s", "min_calls": 5})
    v2 = counter_version(app, "2.0.0")
    del v2.services["add"]

    @v2.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        await trio.sleep(0.5)  # well over three times any baseline of a busy machine
        return 0

    async with app.open() as sup:
        await _adds(sup, 20)  # the old version's baseline
        await sup.update("counter", app.bundle(v2))
        await _adds(sup, 5)
        await wait_until(lambda: _rolled_back(sup), "it rolled back", limit=5)
    (rollback,) = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert rollback["reason"].startswith("p99 latency ")
    assert rollback["p99_ms"] >= 500


@pytest.mark.trio
async def test_a_rollback_by_hand_thaws_the_old_container_with_its_state(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s", "keep": "60s"})
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        old_pid = sup.feature("counter").statistics().pid
        await _adds(sup, 2)
        await sup.update("counter", app.bundle(v2))
        assert await _adds(sup, 2) == ["3", "4"]  # 2.0.0 took the count over
        await wait_until(lambda: _frozen(sup, old_pid), "the old version is frozen")
        report = await sup.rollback("counter")
        assert (report.action, report.from_version, report.to_version) == (
            "rollback",
            "2.0.0",
            "1.0.0",
        )
        assert not report.cold
        stats = sup.feature("counter").statistics()
        assert (stats.version, stats.pid) == ("1.0.0", old_pid)
        # the old container, thawed, goes on from where it was frozen
        assert await count(sup) == {"count": 2, "version": "1.0.0"}
        with pytest.raises(UpdateError, match="no previous version"):
            await sup.rollback("counter")  # nothing kept any more, and no history to go by
    (rollback,) = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert (rollback["reason"], rollback["decision"]) == ("rolled back by hand", "operate")
    assert capsule.testing.leftovers() == []


def _frozen(sup: Supervisor, pid: int | None) -> bool:
    state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    updates = sup._updates
    return state in {"S", "D", "T", "t"} and bool(
        updates.status("counter") and updates._active["counter"].frozen
    )


@pytest.mark.trio
async def test_a_forward_only_version_that_fails_is_quarantined_not_rolled_back(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update={"crashes": 1, "probation": "30s"})
    v2 = _crashing(app, forward_only=True)
    async with app.open() as sup:
        old_pid = sup.feature("counter").statistics().pid
        report = await sup.update("counter", app.bundle(v2))
        assert report.to_version == "2.0.0"
        assert await _adds(sup, 2) == ["FeatureCrashedError", "FeatureUnavailableError"]
        handle = sup.feature("counter")
        assert handle.state is FeatureState.QUARANTINED
        assert handle.manifest.version == "2.0.0"
        with pytest.raises(UpdateError, match=r"forward_only: it cannot be rolled back"):
            await sup.rollback("counter")
        await wait_until(lambda: not Path(f"/proc/{old_pid}").exists(), "1.0.0 is gone")
    (failed,) = audit_events(app.root / "audit.jsonl", "update-failed")
    assert "forward_only: quarantined, not rolled back" in failed["reason"]
    assert audit_events(app.root / "audit.jsonl", "update-rollback") == []
    assert capsule.testing.leftovers() == []


def _rolled_back(sup: Supervisor) -> bool:
    stats = sup.feature("counter").statistics()
    return (stats.version, stats.update) == ("1.0.0", None)


def _gone(pid: int | None) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.trio
async def test_update_and_rollback_cycles_leave_no_process_mount_cgroup_or_fd(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s", "keep": "60s"})
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        run = sup._rundir
        await _adds(sup, 1)
        views = sorted(os.listdir(run.views))
        fds = _fds()
        for cycle in range(3):
            await sup.update("counter", app.bundle(v2))
            assert len(os.listdir(run.views)) == len(views) + 1  # both versions, side by side
            await sup.rollback("counter")
            await wait_until(
                lambda: len(os.listdir(run.views)) == len(views), f"cycle {cycle}: one view"
            )
        assert await count(sup) == {"count": 1, "version": "1.0.0"}
        await wait_until(lambda: _fds() <= fds, "no descriptor is left over")
        await sup.update("counter", app.bundle(v2))  # and close during its probation
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_rollback_after_the_keep_window_starts_the_previous_version_cold(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "200ms", "keep": "300ms"})
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        first_pid = sup.feature("counter").statistics().pid
        await _adds(sup, 2)
        await sup.update("counter", app.bundle(v2))
        await sup._updates.wait_settled("counter")
        assert [(v.event, v.version) for v in sup.versions("counter")] == [
            ("started", "1.0.0"),
            ("updated", "2.0.0"),
        ]
        assert _gone(first_pid)  # 1.0.0's container is gone
        report = await sup.rollback("counter")
        assert report.cold
        assert (report.from_version, report.to_version) == ("2.0.0", "1.0.0")
        stats = sup.feature("counter").statistics()
        assert stats.version == "1.0.0"
        assert stats.pid not in {first_pid, None}
        assert await count(sup) == {"count": 0, "version": "1.0.0"}  # a cold start: fresh
        assert [(v.event, v.version) for v in sup.versions("counter")] == [
            ("started", "1.0.0"),
            ("updated", "2.0.0"),
            ("rolled-back", "1.0.0"),
        ]
    (rollback,) = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert rollback["cold"] is True
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_the_tokens_of_a_rolled_back_version_are_refused_to_the_old_one(
    tmp_path: Path,
) -> None:
    """2.0.0 may call other.echo, 1.0.0 may not: after a rollback, 1.0.0 presenting a token
    2.0.0 held (leaked to it) is refused, and the call stays denied."""
    app = counter_app(tmp_path / "app", update={"probation": "30s"})
    app._specs["counter"].approve = {"call": ["other.echo"]}
    other = app.feature("other")

    @other.service("echo")
    async def _echo(ctx: Context, request: Any) -> Any:
        return request

    v1 = app._specs["counter"].feature

    @v1.service("present")
    async def _present(ctx: Context, tokens: list[str]) -> list[str]:
        outcomes = []
        for token in tokens:
            try:
                await ctx._client.admit(token)
                outcomes.append("admitted")
            except Exception as exc:  # the outcome is the answer
                outcomes.append(type(exc).__name__)
        try:
            await ctx.call("other", "echo", "through a leaked token")
            outcomes.append("called")
        except Exception as exc:  # the outcome is the answer
            outcomes.append(type(exc).__name__)
        return outcomes

    v2 = app.version("counter", "2.0.0", access={"call": ["other.echo"]})
    counter(v2, "2.0.0")
    async with app.open() as sup:
        await sup.update("counter", app.bundle(v2), approve=True)
        leaked = [
            held.text
            for held in sup.feature("counter").tokens()
            if "icc:call:other.echo" in held.capabilities
        ]
        assert leaked
        await sup.rollback("counter")
        assert await sup.call("counter", "present", leaked) == [
            *["InvalidTokenError"] * len(leaked),
            "CapabilityDeniedError",
        ]
    refused = [
        e for e in audit_events(app.root / "audit.jsonl", "admit") if e["decision"] == "refuse"
    ]
    assert len(refused) == len(leaked)


@pytest.mark.trio
async def test_calls_held_at_the_switch_do_not_count_as_the_new_versions_latency(
    tmp_path: Path,
) -> None:
    # the old version takes 300 ms to export its state while a client keeps calling: the
    # calls held meanwhile wait for the switch, not for the new version, which is as fast
    # as the old one and so passes its probation on p99
    policy = {"probation": "1s", "min_calls": 5, "p99_ratio": 20}  # noise aside: 300 ms trips it
    app = counter_app(tmp_path / "app", update=policy, client=True)
    v1 = app.inline["counter"]
    exported = v1.state_export
    assert exported is not None

    async def _slow_export(ctx: Context) -> bytes:
        await trio.sleep(0.3)
        return await exported(ctx)

    v1.state_export = _slow_export
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        outcome: dict[str, Any] = {}

        async def pump() -> None:
            request = {"n": 200, "pause": 0.005}
            outcome.update(await sup.call("client", "pump", request, timeout=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            await trio.sleep(0.2)
            report = await sup.update("counter", app.bundle(v2))
        assert report.held > 0
        assert report.pause >= 0.3
        handle = sup.feature("counter")
        await wait_until(lambda: handle.update != "1.0.0 -> 2.0.0 (probation)", "probation ended")
        assert outcome["errors"] == []
        assert (handle.manifest.version, handle.update) == ("2.0.0", "1.0.0 -> 2.0.0 (keep)")
    assert audit_events(app.root / "audit.jsonl", "update-rollback") == []
