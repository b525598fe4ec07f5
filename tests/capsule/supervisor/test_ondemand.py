"""On-demand features in real containers: nothing on the host while stopped, started by the
first permitted request, stopped again when idle; judged from the host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import (
    FeatureStartError,
    FeatureState,
    FeatureTimeoutError,
    FeatureUnavailableError,
    RemoteError,
)
from capsule._container._feature import Context
from capsule._supervisor import _ondemand
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, echo, wait_state
from tests.capsule.supervisor.ondemand_helpers import traces

ON_DEMAND: dict[str, Any] = {"start": "on-demand", "idle_stop": "300ms"}
NO_RESTART = {"policy": "on-failure", "max_restarts": 2, "window": "60s", "backoff": "10ms..20ms"}


def lazy_app(tmp_path: Path, **policy: Any) -> TestApp:
    app = TestApp(tmp_path)
    lazy = app.feature("lazy", limits=LIMITS, policy={**ON_DEMAND, **policy})
    lazy.service("echo")(echo)
    return app


def audit_events(app: TestApp, sup: Any, event: str) -> list[dict[str, Any]]:
    sup._audit.flush()
    lines = (app.root / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [line for line in map(json.loads, lines) if line.get("event") == event]


@pytest.mark.trio
async def test_a_stopped_on_demand_feature_leaves_nothing_on_the_host_until_called(
    tmp_path: Path,
) -> None:
    app = lazy_app(tmp_path, idle_stop="never")
    with trio.fail_after(30):
        async with app.open() as sup:
            handle = sup.feature("lazy")
            assert handle.state is FeatureState.STOPPED
            stats = handle.statistics()
            assert (stats.state, stats.pid, stats.wakes) == ("stopped (on-demand)", None, 0)
            assert traces(sup, "lazy") == []
            assert await sup.call("lazy", "echo", "hello") == "hello"
            stats = handle.statistics()
            assert stats.state == "running"
            assert stats.wakes == 1
            assert stats.time_to_ready is not None
            assert stats.time_to_ready > 0
            assert stats.last_wake is not None
            assert stats.idle_left is None  # idle_stop = "never"
            found = traces(sup, "lazy")
            assert any(t.startswith("process") for t in found), found
            assert len(audit_events(app, sup, "wake")) == 2  # asked for, then ready
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_denied_call_does_not_wake_an_on_demand_feature(tmp_path: Path) -> None:
    app = lazy_app(tmp_path, idle_stop="never")
    stranger = app.feature("stranger", limits=LIMITS)  # granted nothing
    friend = app.feature("friend", limits=LIMITS, policy={"call": ["lazy.echo"]})

    @stranger.service("poke")
    @friend.service("poke")
    async def _(ctx: Context, request: Any) -> Any:
        return await ctx.call("lazy", "echo", request)

    with trio.fail_after(30):
        async with app.open() as sup:
            for _ in range(3):
                with pytest.raises(RemoteError, match="CapabilityDeniedError"):
                    await sup.call("stranger", "poke", 1)
            await trio.sleep(0.2)  # time for a start that should not happen
            assert traces(sup, "lazy") == []
            assert sup.feature("lazy").statistics().wakes == 0
            assert sup.feature("lazy").state is FeatureState.STOPPED
            assert await sup.call("friend", "poke", 2) == 2
            assert sup.feature("lazy").statistics().wakes == 1
            assert next(e["reason"] for e in audit_events(app, sup, "wake")) == "friend"
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_an_eager_feature_starting_calls_an_on_demand_one_from_its_on_start(
    tmp_path: Path,
) -> None:
    app = lazy_app(tmp_path, idle_stop="never")
    early = app.feature("early", limits=LIMITS, policy={"call": ["lazy.echo"]})
    early.service("echo")(echo)

    @early.on_start
    async def _(ctx: Context) -> None:  # while the supervisor starts the app
        await ctx.call("lazy", "echo", "first")

    with trio.fail_after(30):
        async with app.open(start_timeout=20) as sup:
            assert sup.feature("early").statistics().restarts == 0
            assert sup.feature("lazy").statistics().wakes == 1
            assert trio.current_time() - sup.feature("early").instance.started_at < 10
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_stream_wakes_it_and_stop_puts_it_back_to_sleep(tmp_path: Path) -> None:
    app = lazy_app(tmp_path, idle_stop="never")
    lazy = app.feature("counter", limits=LIMITS, policy={"start": "on-demand"})

    @lazy.service("count")
    async def _(ctx: Context, request: Any) -> Any:
        for n in range(request):
            yield n

    with trio.fail_after(30):
        async with app.open() as sup:
            async with sup.stream("counter", "count", 3) as items:
                assert [item async for item in items] == [0, 1, 2]
            assert sup.feature("counter").statistics().wakes == 1
            instance = sup.feature("counter").instance
            assert instance is not None
            await sup.stop("counter")
            await instance.released.wait()  # its view and cgroup go just after the stop
            stats = sup.feature("counter").statistics()
            assert (stats.state, stats.pid) == ("stopped (on-demand)", None)
            assert traces(sup, "counter") == []
            async with sup.stream("counter", "count", 2) as items:
                assert [item async for item in items] == [0, 1]
            assert sup.feature("counter").statistics().wakes == 2
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_two_hundred_concurrent_first_calls_start_one_container(tmp_path: Path) -> None:
    app = lazy_app(tmp_path, idle_stop="never")
    answers: list[int] = []
    with trio.fail_after(60):
        async with app.open() as sup:

            async def one(n: int) -> None:
                answers.append(await sup.call("lazy", "echo", n, timeout=30))

            async with trio.open_nursery() as nursery:
                for n in range(200):
                    nursery.start_soon(one, n)
            assert sorted(answers) == list(range(200))
            assert sup.statistics().containers_started == 1
            assert sup.feature("lazy").statistics().wakes == 1
            assert sup.feature("lazy").generation == 1
            processes = [t for t in traces(sup, "lazy") if t.startswith("process")]
            assert processes
            assert len({t for t in traces(sup, "lazy") if t.startswith("cgroup")}) >= 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_failing_start_answers_every_held_call_with_the_reason(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    lazy = app.feature("lazy", limits=LIMITS, restart=NO_RESTART, policy=ON_DEMAND)
    lazy.service("echo")(echo)

    @lazy.on_start
    async def _(ctx: Context) -> None:
        raise RuntimeError("the disk is full")

    with trio.fail_after(30):
        async with app.open() as sup:
            errors: list[BaseException] = []

            async def one() -> None:
                try:
                    await sup.call("lazy", "echo", 1, timeout=20)
                except FeatureStartError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(one)
            assert len(errors) == 20
            assert all("the disk is full" in str(e) for e in errors), errors[0]
            stats = sup.feature("lazy").statistics()
            assert stats.state == "stopped (on-demand)"
            assert stats.last_exit is not None
            assert "the disk is full" in stats.last_exit
            assert traces(sup, "lazy") == []
            # each failed wake counts against the restart limit: past it, quarantined
            with pytest.raises(FeatureStartError, match="the disk is full"):
                await sup.call("lazy", "echo", 1)
            with pytest.raises(FeatureUnavailableError, match=r"quarantined.*the disk is full"):
                await sup.call("lazy", "echo", 1)
            assert sup.feature("lazy").state is FeatureState.QUARANTINED
            assert sup.feature("lazy").statistics().wakes == 3
            refused = [e for e in audit_events(app, sup, "wake") if e["decision"] == "refuse"]
            assert len(refused) == 3
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_idle_stop_drains_the_feature_and_carries_its_state(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    out = app.volume("out")
    lazy = app.feature(
        "lazy",
        limits=LIMITS,
        policy={**ON_DEMAND, "fs": [{"path": "/out", "volume": "out", "mode": "rw"}]},
    )
    count = {"n": 0}

    @lazy.service("bump")
    async def _(ctx: Context, request: Any) -> Any:
        count["n"] += 1
        return count["n"]

    @lazy.on_stop
    async def _(ctx: Context) -> None:
        await trio.Path("/out/stopped").write_text(str(count["n"]), encoding="utf-8")

    @lazy.export_state
    async def _(ctx: Context) -> bytes:
        return str(count["n"]).encode()

    @lazy.import_state
    async def _(ctx: Context, from_version: str, data: bytes) -> None:
        count["n"] = int(data)

    with trio.fail_after(30):
        async with app.open() as sup:
            handle = sup.feature("lazy")
            assert [await sup.call("lazy", "bump") for _ in range(3)] == [1, 2, 3]
            left = handle.statistics().idle_left
            assert left is not None
            assert 0 < left <= 0.3
            await wait_state(sup, "lazy", FeatureState.STOPPED)
            assert traces(sup, "lazy") == []
            assert (out / "stopped").read_text(encoding="utf-8") == "3"
            assert handle.tokens() == ()
            stops = audit_events(app, sup, "idle-stop")
            assert len(stops) == 1
            assert "bytes of state kept" in stops[0]["reason"]
            assert await sup.call("lazy", "bump") == 4  # woken again, its count carried
            assert handle.statistics().wakes == 2
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_deadline_lapsing_while_held_is_a_clean_timeout(tmp_path: Path) -> None:
    app = lazy_app(tmp_path, idle_stop="never")
    slow = app.feature("slow", limits=LIMITS, policy={"start": "on-demand"})
    slow.service("echo")(echo)

    @slow.on_start
    async def _(ctx: Context) -> None:
        await trio.sleep(1.5)

    with trio.fail_after(30):
        async with app.open() as sup:
            started = trio.current_time()
            with pytest.raises(FeatureTimeoutError):
                await sup.call("slow", "echo", 1, timeout=0.3)
            assert trio.current_time() - started < 1.2
            assert await sup.call("slow", "echo", 2, timeout=10) == 2  # the start went on
            assert sup.feature("slow").statistics().wakes == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_wake_on_events_start_a_subscriber_and_others_are_counted_and_dropped(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path)
    lazy = app.feature(
        "lazy",
        limits=LIMITS,
        topics=["lazy.heard"],
        policy={
            **ON_DEMAND,
            "idle_stop": "never",
            "wake_on": ["notes.saved"],
            "subscribe": ["notes.*"],
            "publish": ["lazy.heard"],
        },
    )

    @lazy.on("notes.*")
    async def _(ctx: Context, event: Any) -> None:
        await ctx.publish("lazy.heard", event)

    with trio.fail_after(30):
        async with app.open() as sup, sup.subscribe("lazy.heard") as heard:
            assert await sup.publish("notes.edited", "x") == 0  # not in wake_on
            assert sup.feature("lazy").statistics().events_dropped == 1
            assert traces(sup, "lazy") == []
            assert await sup.publish("notes.saved", "first") == 1  # kept for it
            async for event in heard:
                assert event.payload == "first"
                break
            assert sup.feature("lazy").statistics().wakes == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_an_on_demand_feature_starts_the_on_demand_features_it_requires(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path)
    base = app.feature("base", limits=LIMITS, policy={"start": "on-demand"})
    base.service("echo")(echo)
    top = app.feature("top", limits=LIMITS, requires=["base"], policy={"start": "on-demand"})
    top.service("echo")(echo)
    with trio.fail_after(30):
        async with app.open() as sup:
            assert await sup.call("top", "echo", 1) == 1
            assert sup.feature("base").running
            base_stats = sup.feature("base").statistics()
            assert base_stats.wakes == 1
            assert sup.statistics().containers_started == 2
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_wakes_per_caller_are_rate_limited_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ondemand, "WAKE_BURST", 2)
    monkeypatch.setattr(_ondemand, "WAKE_RATE", 0.01)
    app = TestApp(tmp_path)
    for name in ("one", "two", "three"):
        app.feature(name, limits=LIMITS, policy={"start": "on-demand"}).service("echo")(echo)
    calls = ["one.echo", "two.echo", "three.echo"]
    caller = app.feature("caller", limits=LIMITS, policy={"call": calls})

    @caller.service("poke")
    async def _(ctx: Context, request: Any) -> Any:
        return await ctx.call(request, "echo", request)

    with trio.fail_after(30):
        async with app.open() as sup:
            assert await sup.call("caller", "poke", "one") == "one"
            assert await sup.call("caller", "poke", "two") == "two"
            with pytest.raises(RemoteError, match="woke stopped features"):
                await sup.call("caller", "poke", "three")
            assert traces(sup, "three") == []
            denied = [
                e
                for e in audit_events(app, sup, "call")
                if e["decision"] == "deny" and "woke stopped features" in e["reason"]
            ]
            assert len(denied) == 1
            assert await sup.call("three", "echo", 3) == 3  # the host is not limited
    assert capsule.testing.leftovers() == []


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


@pytest.mark.trio
async def test_a_hundred_wake_and_idle_stop_cycles_leak_nothing(tmp_path: Path) -> None:
    app = lazy_app(tmp_path, idle_stop="50ms")
    with trio.fail_after(180):
        async with app.open() as sup:
            handle = sup.feature("lazy")
            verifier = sup._authority.verifier

            async def cycle() -> None:
                assert await sup.call("lazy", "echo", 1) == 1
                instance = handle.instance
                assert instance is not None
                await wait_state(sup, "lazy", FeatureState.STOPPED)
                await instance.released.wait()
                for text in instance.spec.start.tokens:  # every token it held is dead
                    assert verifier.diagnose(text, aud="lazy")[0] is None

            for _ in range(10):  # warm up: caches, the zygote, the audit file
                await cycle()
            fds, rss = _fds(), _rss()
            for _ in range(100):
                await cycle()
                assert traces(sup, "lazy") == []
            assert _fds() <= fds
            assert _rss() - rss < 8 << 20, f"supervisor RSS grew by {(_rss() - rss) >> 10} KiB"
            assert handle.statistics().wakes == 110
            assert handle.tokens() == ()
    assert capsule.testing.leftovers() == []
