"""A/B variants in real containers: calls split by key and sticky while the split ramps,
a crashing candidate aborted with no caller error after its guard fires, shadow mode,
promotion and abort leaving one version and nothing behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
import fusefs
from capsule import FeatureCrashedError, Supervisor, UpdateError
from capsule._container._feature import Context
from capsule._sandbox._cgroup_detect import detect
from capsule._sandbox._cgroup_files import run_name_for
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, restart, wait_until
from tests.capsule.update_helpers import QUICK, audit_events, counter, counter_app, counter_version

#: the latency guard judges a fresh container's first calls (its imports warming up) against
#: a warm control: these tests are about routing, not that guard
_LENIENT = {"p99_ratio": 1000}


async def _versions(sup: Supervisor, keys: list[str]) -> dict[str, str]:
    """The version that answers ``get`` for each host key."""
    return {k: (await sup.call("counter", "get", key=k))["version"] for k in keys}


def _traces(sup: Supervisor) -> tuple[int, int]:
    """View mounts and cgroups of counter's containers in this app run."""
    mounts = [p for p, _ in fusefs.fuse_mounts_beneath(str(sup._rundir.views)) if "counter-" in p]
    groups = [
        g
        for root in detect().roots.values()
        for g in (Path(root) / "capsule" / run_name_for(os.getpid())).glob("counter-*")
    ]
    return len(mounts), len(groups)


@pytest.mark.trio
async def test_each_key_keeps_its_variant_while_the_candidate_is_ramped_up(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update=_LENIENT)
    v2 = counter_version(app, "2.0.0")
    keys = [f"user-{i}" for i in range(60)]
    async with app.open() as sup:
        status = await sup.set_variants("counter", {"1.0.0": 70, str(app.bundle(v2)): 30})
        assert [(v.version, v.role, v.share) for v in status.variants] == [
            ("1.0.0", "control", 70.0),
            ("2.0.0", "candidate", 30.0),
        ]
        first = await _versions(sup, keys)
        assert set(first.values()) == {"1.0.0", "2.0.0"}
        assert await _versions(sup, keys) == first  # sticky
        for share in (50, 80, 100):
            again = "2.0.0" if share < 80 else str(app.bundle(v2))  # its bundle: the same one
            await sup.set_variants("counter", {"1.0.0": 100 - share, again: share})
            now = await _versions(sup, keys)
            assert all(now[k] == "2.0.0" for k in keys if first[k] == "2.0.0")
            first = now
        assert set(first.values()) == {"2.0.0"}
        status = sup.variants("counter")
        assert status is not None
        row = {v.version: v for v in status.variants}
        assert row["2.0.0"].calls >= 60
        assert row["2.0.0"].errors == 0
        assert row["2.0.0"].p50_ms is not None
        assert row["2.0.0"].pid is not None
        assert status.error_rate_diff["2.0.0"] is not None
        assert "2.0.0" in status.table()
        assert sup.statistics().variants["counter"].variants[1].version == "2.0.0"
        assert sup.feature("counter").statistics().variants == "1.0.0 0% / 2.0.0 100%"
        assert len(status.variants) == 2
        assert sup.statistics().containers_started == 2  # the bundle named again: no new one
        with pytest.raises(UpdateError, match="runs variants"):
            await sup.update("counter", app.bundle(v2))
    events = audit_events(app.root / "audit.jsonl", "variants-")
    assert [e["event"] for e in events] == ["variants-set"] * 4 + ["variants-abort"]
    assert events[0]["shares"] == {"1.0.0": 70.0, "2.0.0": 30.0}
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_payload_field_keys_the_calls_of_other_features(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app", client=True, update=_LENIENT)
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        await sup.set_variants(
            "counter", {"1.0.0": 50, str(app.bundle(v2)): 50}, sticky="payload.user"
        )
        seen = {
            user: {(await sup.call("counter", "get", {"user": user}))["version"] for _ in range(3)}
            for user in range(30)
        }
        assert all(len(versions) == 1 for versions in seen.values())  # sticky per user
        assert {v for versions in seen.values() for v in versions} == {"1.0.0", "2.0.0"}
        # the client feature's calls carry no user: keyed by their caller, one variant
        await sup.call("client", "pump", {"n": 10, "pause": 0})
        status = sup.variants("counter")
        assert status is not None
        assert status.sticky == "payload.user"


@pytest.mark.trio
async def test_a_crashing_candidate_is_aborted_and_no_call_fails_after_the_guard(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update={"crashes": 1})
    v2 = counter_version(app, "2.0.0")
    del v2.services["add"]

    @v2.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        os._exit(3)

    async with app.open() as sup:
        control_pid = sup.feature("counter").statistics().pid
        await sup.set_variants("counter", {"1.0.0": 50, str(app.bundle(v2)): 50})
        failed = []
        for i in range(40):
            try:
                await sup.call("counter", "add", key=f"user-{i}", timeout=10)
            except FeatureCrashedError:
                failed.append(i)
        assert len(failed) == 1, failed  # the call in flight when it crashed; none after
        await wait_until(lambda: sup.variants("counter") is None, "the experiment ended")
        assert sup.feature("counter").statistics().pid == control_pid
        assert sup.feature("counter").manifest.version == "1.0.0"
        one = (1, len(detect().roots))  # a view, and a cgroup in each hierarchy
        await wait_until(lambda: _traces(sup) == one, "one container's view and cgroup are left")
    abort = audit_events(app.root / "audit.jsonl", "variants-abort")
    assert len(abort) == 1
    assert abort[0]["decision"] == "fail"
    assert abort[0]["reason"].startswith("2.0.0 failed its guard: 1 crash(es)")
    assert abort[0]["crashes"] == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_shadow_mode_serves_every_call_from_the_control_and_mirrors_it(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", update=_LENIENT)
    slow = app.version("counter", "2.0.0")
    state = counter(slow, "2.0.0")
    del slow.services["add"]

    @slow.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        await trio.sleep(1.0)  # slower than the whole loop below: it must not hold it up
        state["count"] += 1
        return state["count"]

    async with app.open() as sup:
        await sup.set_variants("counter", {"1.0.0": 0, str(app.bundle(slow)): 100}, shadow=True)
        with trio.fail_after(0.9):
            answers = [await sup.call("counter", "add", key=f"k{i}") for i in range(10)]
        assert answers == list(range(1, 11))  # the control counted each call once
        assert (await sup.call("counter", "get"))["version"] == "1.0.0"
        await wait_until(
            lambda: (s := sup.variants("counter")) is not None and s.variants[1].calls == 11,
            "the 11 mirrors (10 add, 1 get) were answered",
        )
        status = sup.variants("counter")
        assert status is not None
        assert status.shadow
        assert status.variants[1].role == "shadow"
        assert status.variants[1].p50_ms is not None
        assert status.variants[1].p50_ms >= 1000
        final = await sup.abort_variants("counter")
        assert final.ended == "aborted by hand"
        one = (1, len(detect().roots))  # the control's view, and a cgroup in each hierarchy
        await wait_until(lambda: _traces(sup) == one, "the candidate's view and cgroup are gone")
        assert not (sup.state_dir / "private" / "counter@2.0.0").exists()
        assert (await sup.call("counter", "get"))["count"] == 10
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_promoting_a_candidate_leaves_one_version_and_nothing_behind(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path / "app")
    private = {"path": "/data", "mode": "private", "quota": "1MiB"}
    policy = {"update": {**QUICK, **_LENIENT}, "fs": [private]}
    counter(app.feature("counter", limits=LIMITS, restart=restart(), policy=policy), "1.0.0")
    v2 = app.version("counter", "2.0.0", access={"fs": [private]})
    counter(v2, "2.0.0")
    async with app.open() as sup:
        for _ in range(3):
            await sup.call("counter", "add", key="alice")
        await sup.set_variants("counter", {"1.0.0": 50, str(app.bundle(v2)): 50}, approve=True)
        storage = sup.state_dir / "private" / "counter@2.0.0"
        status = sup.variants("counter")
        assert status is not None
        assert status.variants[1].storage == str(storage)
        candidate_pid = status.variants[1].pid
        assert candidate_pid is not None
        report = await sup.promote_variant("counter", "2.0.0")
        assert report is not None
        assert report.to_version == "2.0.0"
        assert sup.variants("counter") is None
        assert sup.feature("counter").manifest.version == "2.0.0"
        got = await sup.call("counter", "get")
        assert got["version"] == "2.0.0"
        assert got["count"] >= 3
        with pytest.raises(ProcessLookupError):
            os.kill(candidate_pid, 0)
        one = (1, len(detect().roots))  # a view, and a cgroup in each hierarchy
        await wait_until(lambda: _traces(sup) == one, "one container's view and cgroup are left")
        assert not storage.exists()
        assert [v.version for v in sup.versions("counter")][-1] == "2.0.0"
    events = audit_events(app.root / "audit.jsonl", "variants-", "update-done")
    assert [e["event"] for e in events] == ["variants-set", "variants-promote", "update-done"]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_variant_asking_for_more_needs_approval_and_its_tokens_are_its_own(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path / "app")
    private = {"path": "/data", "mode": "private", "quota": "1MiB"}
    feature = app.feature(
        "counter",
        limits=LIMITS,
        restart=restart(),
        policy={"update": {**QUICK, **_LENIENT}},
        approve={"fs": [private]},
    )
    counter(feature, "1.0.0")
    v2 = app.version("counter", "2.0.0", access={"fs": [private]})
    counter(v2, "2.0.0")
    async with app.open() as sup:
        with pytest.raises(UpdateError, match=r"asks for more than 1\.0\.0 holds") as refused:
            await sup.set_variants("counter", {"1.0.0": 50, str(app.bundle(v2)): 50})
        assert "/data" in str(refused.value)
        assert sup.variants("counter") is None
        await sup.set_variants("counter", {"1.0.0": 50, str(app.bundle(v2)): 50}, approve=True)
        control = {c for t in sup.feature("counter").tokens() for c in t.capabilities}
        candidate = sup._variants._active["counter"].candidates["2.0.0"].instance
        assert candidate is not None
        held = {str(c) for h in candidate.peer.handles.values() for c in h.claims.caps}
        assert any(c.startswith("fs:") and "/data" in c for c in held), held
        assert not any("/data" in c for c in control), control
