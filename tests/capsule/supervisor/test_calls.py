"""Calls from the host program: cancellation reaches the handler, restarts are waited for,
calls in flight fail at once when their container dies."""

from __future__ import annotations

import gc
import os
import signal
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import FeatureCrashedError, FeatureState, FeatureTimeoutError, Supervisor
from capsule._container._feature import Context
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import (
    Load,
    alive,
    children,
    echo_app,
    echo_feature,
    pids,
    poll,
    restart,
    wait_new_pid,
    wait_until,
)


def _cancellable(app: TestApp) -> None:
    """``sleeper``: ``wait`` never returns unless cancelled; ``probe`` says what ``wait`` saw."""
    feature = echo_feature(app, "sleeper")
    seen = {"running": 0, "cancelled": 0}

    @feature.service("wait")
    async def _wait(ctx: Context, request: Any) -> None:
        seen["running"] += 1
        try:
            await trio.sleep_forever()
        finally:
            seen["running"] -= 1
            seen["cancelled"] += 1

    @feature.service("probe")
    async def _probe(ctx: Context, request: Any) -> dict[str, int]:
        return dict(seen)


async def _cancel_by_scope(sup: Supervisor) -> None:
    with trio.move_on_after(0.3) as scope:
        await sup.call("sleeper", "wait", timeout=30)
    assert scope.cancelled_caught


async def _cancel_by_timeout(sup: Supervisor) -> None:
    with pytest.raises(FeatureTimeoutError):
        await sup.call("sleeper", "wait", timeout=0.3)


@pytest.mark.trio
@pytest.mark.parametrize("cancel", [_cancel_by_scope, _cancel_by_timeout], ids=["scope", "timeout"])
async def test_cancelling_the_caller_cancels_the_handler(
    tmp_path: Path, cancel: Callable[[Supervisor], Awaitable[None]]
) -> None:
    app = TestApp(tmp_path)
    _cancellable(app)
    with trio.fail_after(20):
        async with app.open() as sup:
            sleeper = sup.feature("sleeper")
            pid = sleeper.statistics().pid
            for round_ in (1, 2):
                start = trio.current_time()
                await cancel(sup)
                assert trio.current_time() - start < 1.5
                assert sleeper.statistics().calls_in_flight == 0

                # the handler in the container was cancelled, not abandoned: it ran its
                # finally block and nothing of it is still running
                async def probed(expected: int = round_) -> bool:
                    seen = await sup.call("sleeper", "probe", timeout=2)
                    return bool(seen == {"running": 0, "cancelled": expected})

                await poll(probed, f"the handler saw cancellation {round_}", limit=5)
            assert sleeper.statistics().pid == pid
            assert sleeper.statistics().calls_in_flight == 0
            assert await sup.call("sleeper", "echo", "fine") == "fine"
    assert capsule.testing.leftovers() == []


def _token_feature(app: TestApp) -> None:
    """``slow``: its on_start takes 0.3 s and picks a token that ``token`` answers."""
    feature = echo_feature(app, "slow", restart=restart(backoff="10ms..20ms"))
    state = {"token": ""}

    @feature.on_start
    async def _start(ctx: Context) -> None:
        await trio.sleep(0.3)
        state["token"] = os.urandom(8).hex()

    @feature.service("token")
    async def _token(ctx: Context, request: Any) -> str:
        return state["token"]


async def _crash(sup: Supervisor, nursery: trio.Nursery) -> None:
    with pytest.raises(FeatureCrashedError):
        await sup.call("slow", "fault", {"kind": "exit", "code": 1})
    assert sup.feature("slow").state is FeatureState.RESTARTING


async def _restart(sup: Supervisor, nursery: trio.Nursery) -> None:
    handle = sup.feature("slow")
    nursery.start_soon(sup.restart, "slow")
    await wait_until(lambda: handle.state is not FeatureState.RUNNING, "the restart began")


@pytest.mark.trio
@pytest.mark.parametrize("interrupt", [_crash, _restart], ids=["crash", "restart"])
async def test_calls_during_a_restart_wait_and_succeed(
    tmp_path: Path, interrupt: Callable[[Supervisor, trio.Nursery], Awaitable[None]]
) -> None:
    app = TestApp(tmp_path)
    _token_feature(app)
    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            old = await sup.call("slow", "token")
            pid = pids(sup)["slow"]
            await interrupt(sup, nursery)
            start = trio.current_time()
            answers: list[tuple[str, float]] = []

            async def call() -> None:
                token = await sup.call("slow", "token", timeout=10)
                answers.append((token, trio.current_time() - start))

            async with trio.open_nursery() as callers:
                for _ in range(5):
                    callers.start_soon(call)
            assert len(answers) == 5
            tokens = {token for token, _ in answers}
            assert len(tokens) == 1
            assert tokens != {old}
            # every one of them waited for the new container's on_start hook
            assert min(took for _, took in answers) >= 0.25
            assert pids(sup)["slow"] not in (None, pid)
    assert capsule.testing.leftovers() == []


async def _segfault_from_another_call(sup: Supervisor) -> None:
    with pytest.raises(FeatureCrashedError):
        await sup.call("victim", "fault", {"kind": "segfault"})


async def _sigkill_from_outside(sup: Supervisor) -> None:
    capsule.testing.kill(sup, "victim", signal.SIGKILL)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("kill", "sig"),
    [
        pytest.param(_segfault_from_another_call, signal.SIGSEGV, id="segfault"),
        pytest.param(_sigkill_from_outside, signal.SIGKILL, id="sigkill"),
    ],
)
async def test_calls_in_flight_fail_at_once_when_the_container_dies(
    tmp_path: Path, kill: Callable[[Supervisor], Awaitable[None]], sig: signal.Signals
) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "victim")
    echo_feature(app, "other")
    failures: list[tuple[BaseException, float]] = []

    async def hang() -> None:
        try:
            await sup.call("victim", "fault", {"kind": "hang"}, timeout=2)
        except Exception as exc:  # every outcome is checked below
            failures.append((exc, trio.current_time()))

    with trio.fail_after(20):
        async with app.open() as sup, trio.open_nursery() as nursery:
            before = pids(sup)
            load = Load(sup, ["other"])
            nursery.start_soon(load.run)
            victim = sup.feature("victim")
            async with trio.open_nursery() as callers:
                for _ in range(3):
                    callers.start_soon(hang)
                await wait_until(
                    lambda: victim.statistics().calls_in_flight == 3, "three calls are in flight"
                )
                killed_at = trio.current_time()
                await kill(sup)
            assert len(failures) == 3
            for exc, when in failures:
                assert isinstance(exc, FeatureCrashedError), exc
                assert exc.signal == sig
                assert when - killed_at < 1.0
            await wait_new_pid(sup, "victim", before["victim"])
            assert await sup.call("victim", "echo", 1) == 1
            assert victim.statistics().calls_in_flight == 0
            await load.more(3)
            await load.stop()
            load.check()
            assert pids(sup)["other"] == before["other"]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_killed_container_takes_its_feature_process_with_it(tmp_path: Path) -> None:
    """The supervisor knows the outer process; the feature runs in the inner one under it.

    The inner process must die with the outer one even though it changes its uid after
    it is forked (a uid change clears the parent-death signal).
    """
    app = echo_app(tmp_path, ["victim"])
    with trio.fail_after(20):
        async with app.open() as sup:
            outer = pids(sup)["victim"]
            assert outer is not None
            (inner,) = children(outer)
            capsule.testing.kill(sup, "victim", signal.SIGKILL)
            await wait_until(lambda: not alive(outer), "the outer process is gone")
            await wait_until(lambda: not alive(inner), "the feature process is gone", limit=1)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_channel_socket_is_closed_when_a_container_ends(tmp_path: Path) -> None:
    async def crash_and_stop() -> None:
        app = echo_app(tmp_path, ["a", "b"])
        async with app.open() as sup:
            pid = pids(sup)["a"]
            with pytest.raises(FeatureCrashedError):
                await sup.call("a", "fault", {"kind": "exit", "code": 2})
            await wait_new_pid(sup, "a", pid)
            await sup.stop("b")

    with trio.fail_after(20), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        await crash_and_stop()
        gc.collect()
    unclosed = [str(w.message) for w in caught if "unclosed <socket" in str(w.message)]
    assert unclosed == []
    assert capsule.testing.leftovers() == []
