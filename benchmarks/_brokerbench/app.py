"""The broker benchmark's app: seven inline features (echo, split in two versions,
caller, publisher, subscriber, quiet and flooder) whose handlers time what they do inside
their containers.

Builds the app only: ``broker.py`` opens it and runs the jobs.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Final

import trio

from _brokerbench.inprocess import TICK
from capsule.feature import Context, Feature
from capsule.testing import TestApp

__all__ = ["FLOOD_TOPIC", "build_app"]

FLOOD_TOPIC: Final = "bench.flood"


def build_app(root: Path) -> tuple[TestApp, Path]:
    """Seven inline features: echo, split, caller, publisher, subscriber, quiet and flooder;
    and the bundle of split's second version.

    The handlers run inside their containers (each feature is pickled whole, so the
    state dicts below are shared by the handlers of one feature, in its container).
    """
    app = TestApp(root, name="brokerbench")
    split_2 = _call_features(app)
    _event_features(app)
    _fairness_features(app)
    return app, app.bundle(split_2)


def _call_features(app: TestApp) -> Feature:
    """``echo`` answers with its request, and so does ``split`` (in two versions: the second
    returned); ``caller`` times calls to them from its container."""
    echo = app.feature("echo", faults=False)
    caller = app.feature(
        "caller",
        requires=["echo", "split"],
        policy={"call": ["echo.echo", "split.echo"]},
        faults=False,
    )
    # the same echo, run as two variants: the guards judge nothing in a benchmark
    relaxed = {"update": {"p99_ratio": 1000, "error_rate": 1}, "variants": {"sticky": "caller"}}
    split = app.feature("split", faults=False, policy=relaxed)
    split_2 = app.version("split", "2.0.0", faults=False)

    for feature in (echo, split, split_2):

        @feature.service("echo")
        async def _echo(ctx: Context, request: Any) -> Any:
            return request

    @caller.service("bench")
    async def _bench(ctx: Context, request: Any) -> list[int]:
        """``n`` sequential calls to ``feature``.echo (echo.echo by default), each timed
        here; the durations in ns."""
        payload, target = request["payload"], request.get("feature", "echo")
        for _ in range(request["warmup"]):
            await ctx.call(target, "echo", payload)
        clock = time.perf_counter_ns
        durations: list[int] = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(request["n"]):
                start = clock()
                reply = await ctx.call(target, "echo", payload)
                durations.append(clock() - start)
                if reply != payload:
                    raise RuntimeError(f"{target}.echo answered {reply!r}")
        finally:
            gc.enable()
        return durations

    @caller.service("pipeline")
    async def _pipeline(ctx: Context, request: Any) -> int:
        """``tasks`` tasks each making ``per_task`` calls in a loop; the elapsed ns."""
        payload = request["payload"]

        async def worker(count: int) -> None:
            for _ in range(count):
                await ctx.call("echo", "echo", payload)

        async def burst(count: int) -> int:
            start = time.perf_counter_ns()
            async with trio.open_nursery() as nursery:
                for _ in range(request["tasks"]):
                    nursery.start_soon(worker, count)
            return time.perf_counter_ns() - start

        await burst(request["warmup"])
        gc.collect()
        gc.disable()
        try:
            return await burst(request["per_task"])
        finally:
            gc.enable()

    return split_2


def _event_features(app: TestApp) -> None:
    """``publisher`` publishes bursts; ``subscriber`` counts them (and the flooder's events)."""
    publisher = app.feature("publisher", policy={"publish": [TICK]}, faults=False)
    subscriber = app.feature("subscriber", policy={"subscribe": [TICK, FLOOD_TOPIC]}, faults=False)

    @publisher.service("burst")
    async def _burst(ctx: Context, request: Any) -> int:
        """Publish ``m`` events as fast as one task can; the elapsed ns."""
        start = time.perf_counter_ns()
        for index in range(request["m"]):
            await ctx.publish(TICK, index)
        return time.perf_counter_ns() - start

    ticks = {"count": 0, "last": 0, "flood": 0}

    @subscriber.on(TICK)
    async def _tick(ctx: Context, event: Any) -> None:
        ticks["count"] += 1
        ticks["last"] = time.perf_counter_ns()

    @subscriber.on(FLOOD_TOPIC)
    async def _flooded(ctx: Context, event: Any) -> None:
        ticks["flood"] += 1

    @subscriber.service("count")
    async def _count(ctx: Context, request: Any) -> int:
        return ticks["count"]

    @subscriber.service("wait")
    async def _wait(ctx: Context, request: Any) -> dict[str, int]:
        """Until ``target`` events are counted, or none came for ``stall_s``: the count and
        how long ago (ns, by this container's clock) the last one was counted."""
        stall_ns = int(request["stall_s"] * 1e9)
        while ticks["count"] < request["target"]:
            seen = ticks["count"]
            await trio.sleep(0.001)
            if ticks["count"] == seen and time.perf_counter_ns() - ticks["last"] > stall_ns:
                break
        return {"count": ticks["count"], "since_last_ns": time.perf_counter_ns() - ticks["last"]}


def _fairness_features(app: TestApp) -> None:
    """``quiet`` answers pings; ``flooder`` publishes or calls flat out until told to stop."""
    quiet = app.feature("quiet", faults=False)
    flooder = app.feature(
        "flooder",
        requires=["echo"],
        policy={"call": ["echo.echo"], "publish": [FLOOD_TOPIC]},
        faults=False,
    )

    @quiet.service("ping")
    async def _ping(ctx: Context, request: Any) -> Any:
        return request

    flood = {"stop": False}

    @flooder.service("flood")
    async def _flood(ctx: Context, request: Any) -> int:
        """Publish, or call with ``tasks`` in flight, until ``stop``; how many were sent."""
        flood["stop"] = False
        sent = [0]
        payload = request["payload"]

        async def publish() -> None:
            while not flood["stop"]:
                await ctx.publish(FLOOD_TOPIC, payload)
                sent[0] += 1

        async def call() -> None:
            while not flood["stop"]:
                await ctx.call("echo", "echo", payload)
                sent[0] += 1

        async with trio.open_nursery() as nursery:
            if request["mode"] == "publish":
                nursery.start_soon(publish)
            else:
                for _ in range(request["tasks"]):
                    nursery.start_soon(call)
        return sent[0]

    @flooder.service("stop")
    async def _stop(ctx: Context, request: Any) -> None:
        flood["stop"] = True
