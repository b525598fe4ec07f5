"""Faults inside one feature's container, injected through its ``fault`` service.

In every test two neighbours keep answering calls in the background while the faulty
feature misbehaves, and again after it has been dealt with; restarts follow the policy
and nothing is left behind once the supervisor closes.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import (
    FeatureCrashedError,
    FeatureError,
    FeatureState,
    FeatureTimeoutError,
    FeatureUnavailableError,
    RemoteError,
)
from capsule._container._feature import Context
from capsule._supervisor._views import VIEW_SERVER_PIDS
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import (
    LIMITS,
    Load,
    alive,
    echo_feature,
    pids,
    restart,
    wait_new_pid,
    wait_until,
)

MiB = 1 << 20


def _app(tmp_path: Path) -> TestApp:
    """``victim`` between two neighbours, ``left`` and ``right``."""
    app = TestApp(tmp_path)
    for name in ("left", "victim", "right"):
        echo_feature(app, name)
    return app


async def _survived(sup: capsule.Supervisor, load: Load, before: dict[str, int | None]) -> None:
    """The neighbours keep answering, in the same containers; the victim answers too."""
    assert await sup.call("victim", "echo", "still here") == "still here"
    await load.more(3)
    await load.stop()
    after = pids(sup)
    assert (after["left"], after["right"]) == (before["left"], before["right"])
    load.check()


@pytest.mark.trio
async def test_handler_exception_is_a_remote_error_and_the_container_survives(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            for attempt in range(3):
                with pytest.raises(RemoteError) as raised:
                    await sup.call(
                        "victim", "fault", {"kind": "raise", "message": f"boom {attempt}"}
                    )
                error = raised.value
                assert isinstance(error, FeatureError)
                assert error.feature == "victim"
                assert error.remote_type == "RuntimeError"
                assert error.remote_message == f"boom {attempt}"
                assert f"RuntimeError: boom {attempt}" in error.remote_traceback
                assert "_faults.py" in error.remote_traceback
            victim = sup.feature("victim").statistics()
            assert victim.pid == before["victim"]
            assert victim.restarts == 0
            assert victim.state == "running"
            assert victim.calls_in_flight == 0
            await _survived(sup, load, before)
            assert pids(sup) == before
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_an_unencodable_reply_is_a_remote_error(tmp_path: Path) -> None:
    app = _app(tmp_path)
    victim = app.feature("odd", limits=LIMITS)

    @victim.service("odd")
    async def _odd(ctx: Context, request: Any) -> Any:
        return object()

    with trio.fail_after(20):
        async with app.open() as sup:
            pid = pids(sup)["odd"]
            with pytest.raises(RemoteError) as raised:
                await sup.call("odd", "odd")
            assert raised.value.remote_type == "TypeError"
            assert pids(sup)["odd"] == pid
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_exit_is_a_crash_with_its_exit_code(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            with pytest.raises(FeatureCrashedError) as crashed:
                await sup.call("victim", "fault", {"kind": "exit", "code": 7})
            assert crashed.value.feature == "victim"
            assert crashed.value.exit_code == 7
            assert crashed.value.signal is None
            assert "exited with code 7" in str(crashed.value)
            await wait_new_pid(sup, "victim", before["victim"])
            stats = sup.feature("victim").statistics()
            assert stats.restarts == 1
            assert stats.last_exit == "exited with code 7"
            await _survived(sup, load, before)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_segfault_is_a_crash_with_sigsegv(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            with pytest.raises(FeatureCrashedError) as crashed:
                await sup.call("victim", "fault", {"kind": "segfault"})
            assert crashed.value.signal == signal.SIGSEGV
            assert crashed.value.exit_code is None
            assert "SIGSEGV" in str(crashed.value)
            await wait_new_pid(sup, "victim", before["victim"])
            assert sup.feature("victim").statistics().last_exit == "killed by SIGSEGV"
            await _survived(sup, load, before)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_os_abort_in_a_feature_is_reported_as_sigabrt(tmp_path: Path) -> None:
    # the feature is its PID namespace's init, which a signal it sends itself cannot end:
    # abort() then falls back to a faulting instruction, a SIGSEGV; the true one is reported
    app = _app(tmp_path)
    victim = app.inline["victim"]

    @victim.service("abort")
    async def _abort(ctx: Context, request: Any) -> None:
        os.abort()

    with trio.fail_after(20):
        async with app.open() as sup:
            before = pids(sup)
            with pytest.raises(FeatureCrashedError) as crashed:
                await sup.call("victim", "abort")
            assert crashed.value.signal == signal.SIGABRT
            assert "killed by SIGABRT" in str(crashed.value)
            await wait_new_pid(sup, "victim", before["victim"])
            assert sup.feature("victim").statistics().last_exit == "killed by SIGABRT"
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_feature_that_ignores_stop_is_killed_after_stop_timeout(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open(stop_timeout=1.0) as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            # SIGTERM ignored, and its stop hook never returns
            assert await sup.call("victim", "fault", {"kind": "stubborn"}) == {"stubborn": True}
            await load.more(1)
            answered = dict(load.answered)
            start = trio.current_time()
            await sup.stop("victim")
            took = trio.current_time() - start
            assert 0.9 <= took < 2.5, took
            # the neighbours answered all along the grace period
            for name in ("left", "right"):
                assert load.answered[name] - answered[name] >= 10, (answered, load.answered)
            victim = sup.feature("victim").statistics()
            assert victim.state == "stopped"
            assert victim.last_exit == "killed by SIGKILL"
            assert victim.restarts == 0
            await load.more(3)
            await load.stop()
            load.check()
            assert pids(sup)["left"] == before["left"]
            assert pids(sup)["right"] == before["right"]
            assert before["victim"] is not None
            assert not alive(before["victim"])
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
@pytest.mark.parametrize(
    ("kind", "count_key"),
    [("forkbomb", "forked"), ("threadbomb", "threads")],
)
async def test_a_fork_bomb_is_stopped_by_the_pids_limit(
    tmp_path: Path, kind: str, count_key: str
) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            result = await sup.call("victim", "fault", {"kind": kind, "limit": 1000})
            # the limit (16 tasks, two of them the container's own) stopped it early
            assert 0 < result[count_key] < 16, result
            if kind == "forkbomb":
                assert result["errno"] == errno.EAGAIN
            else:
                assert result["error"] is not None
            victim = sup.feature("victim").statistics()
            assert victim.pid == before["victim"]
            assert victim.state == "running"
            if victim.pids_current is not None:  # its file-system server's threads too
                assert victim.pids_current <= 16 + VIEW_SERVER_PIDS
            await _survived(sup, load, before)
            assert pids(sup)["victim"] == before["victim"]
    # the bomb's processes went with the container's PID namespace
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_memory_balloon_past_the_limit_kills_only_its_container(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            if sup.statistics().cgroups == "none":
                pytest.skip("no memory cgroup here")
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            start = trio.current_time()
            with pytest.raises(FeatureCrashedError):
                await sup.call("victim", "fault", {"kind": "balloon", "bytes": 1 << 30})
            assert trio.current_time() - start < 5
            await wait_new_pid(sup, "victim", before["victim"])
            assert sup.feature("victim").statistics().restarts == 1
            await _survived(sup, load, before)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_memory_balloon_past_the_limit_is_reported_as_out_of_memory(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup:
            if sup.statistics().cgroups == "none":
                pytest.skip("no memory cgroup here")
            before = pids(sup)
            with pytest.raises(FeatureCrashedError) as crashed:
                await sup.call("victim", "fault", {"kind": "balloon", "bytes": 1 << 30})
            last_exit = sup.feature("victim").statistics().last_exit
            assert last_exit is not None
            assert "out of memory" in last_exit
            assert "out of memory" in str(crashed.value)
            assert crashed.value.signal == signal.SIGKILL
            assert crashed.value.exit_code is None
            await wait_new_pid(sup, "victim", before["victim"])
            assert await sup.call("victim", "echo", 1) == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_cpu_hog_does_not_slow_the_other_features(tmp_path: Path) -> None:
    app = _app(tmp_path)  # every container: cpu = 0.2
    spin = 2.0
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            hog = sup.feature("victim")
            cpu_before = hog.statistics().cpu_usage_ns
            spun = trio.Event()

            async def hog_cpu() -> None:
                await sup.call("victim", "fault", {"kind": "spin", "seconds": spin})
                spun.set()

            nursery.start_soon(hog_cpu)
            await wait_until(lambda: hog.statistics().calls_in_flight == 1, "the spin began")
            latencies = []
            for count in range(20):
                start = trio.current_time()
                assert await sup.call("left", "echo", count) == count
                latencies.append(trio.current_time() - start)
                await trio.sleep(0.01)  # pacing, so the calls spread over the spin
            assert not spun.is_set(), "the spin ended before the calls did"
            latencies.sort()
            assert latencies[len(latencies) // 2] < 0.1, latencies
            await spun.wait()
            cpu_after = hog.statistics().cpu_usage_ns
            if cpu_before is not None and cpu_after is not None:
                # throttled to 0.2 of a core: about 0.4 s of cpu in 2 s, never the whole 2 s
                assert (cpu_after - cpu_before) / 1e9 < 0.5 * spin
            assert await sup.call("victim", "echo", 1) == 1
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_hung_handler_times_out_and_the_feature_still_answers(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            start = trio.current_time()
            with pytest.raises(FeatureTimeoutError) as timed_out:
                await sup.call("victim", "fault", {"kind": "hang"}, timeout=0.3)
            took = trio.current_time() - start
            assert 0.3 <= took < 1.5, took
            assert isinstance(timed_out.value, TimeoutError)
            assert timed_out.value.feature == "victim"
            assert "0.3s" in str(timed_out.value)
            victim = sup.feature("victim")
            assert victim.state is FeatureState.RUNNING
            assert victim.statistics().calls_in_flight == 0
            assert await sup.call("victim", "echo", 2, timeout=1) == 2
            assert victim.statistics().pid == before["victim"]
            await _survived(sup, load, before)
    assert capsule.testing.leftovers() == []


async def _exit(sup: capsule.Supervisor) -> None:
    with pytest.raises(FeatureCrashedError):
        await sup.call("victim", "fault", {"kind": "exit", "code": 3})


async def _segfault(sup: capsule.Supervisor) -> None:
    with pytest.raises(FeatureCrashedError):
        await sup.call("victim", "fault", {"kind": "segfault"})


async def _balloon(sup: capsule.Supervisor) -> None:
    with pytest.raises(FeatureCrashedError):
        await sup.call("victim", "fault", {"kind": "balloon", "bytes": 1 << 30})


async def _sigkill(sup: capsule.Supervisor) -> None:
    instance = sup.feature("victim").instance
    assert instance is not None
    capsule.testing.kill(sup, "victim", signal.SIGKILL)
    await instance.ended.wait()


@pytest.mark.trio
@pytest.mark.parametrize(
    "fault", [_exit, _segfault, _balloon, _sigkill], ids=["exit", "segfault", "balloon", "sigkill"]
)
async def test_repeated_crashes_quarantine_only_the_faulty_feature(
    tmp_path: Path, fault: Callable[[capsule.Supervisor], Awaitable[None]]
) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "left")
    echo_feature(app, "victim", restart=restart(max_restarts=2))
    echo_feature(app, "right")
    with trio.fail_after(30):
        async with app.open() as sup, trio.open_nursery() as nursery:
            if fault is _balloon and sup.statistics().cgroups == "none":
                pytest.skip("no memory cgroup here")
            before = pids(sup)
            load = Load(sup, ["left", "right"])
            nursery.start_soon(load.run)
            victim = sup.feature("victim")
            for count in (1, 2):
                pid = victim.statistics().pid
                await fault(sup)
                await wait_new_pid(sup, "victim", pid)
                assert victim.statistics().restarts == count
                await load.more(1)
            await fault(sup)
            assert victim.state is FeatureState.QUARANTINED
            assert sup.statistics().quarantined == ("victim",)
            with pytest.raises(FeatureUnavailableError):
                await sup.call("victim", "echo", 1)
            await load.more(3)
            await load.stop()
            load.check()
            after = pids(sup)
            assert (after["left"], after["right"]) == (before["left"], before["right"])
    assert capsule.testing.leftovers() == []
