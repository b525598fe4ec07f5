"""The app ``update.py`` measures: a counter holding 10 MiB of state in as many versions
as the run updates to, a version that crashes, a caller that calls it from its own
container at a steady rate, an idle feature and a plugin bundle.

Builds the app only: it times nothing (``update.py`` does).
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any, Final

# first: importing _common takes benchmarks/ off sys.path (benchmarks/fusefs.py would
# stand in for the fusefs package capsule imports)
import _common  # noqa: F401 - imported for what importing it does
import trio

# isort: split
from capsule.feature import Context, Feature
from capsule.testing import TestApp

MIB: Final = 1024 * 1024
STATE_BYTES: Final = 10 * MIB

LIMITS: Final[dict[str, Any]] = {"memory": "256MiB", "pids": 32}
RESTART: Final[dict[str, Any]] = {
    "policy": "on-failure",
    "max_restarts": 50,
    "window": "60s",
    "backoff": "5ms..20ms",
}
#: the default probation verdict (crashes, errors, p99), over a short window
UPDATE_POLICY: Final = {"probation": "300ms", "keep": "60s", "drain": "2s"}


def _counter(feature: Feature, version: str) -> None:
    """``add`` counts and names this version; 10 MiB of state go to the next version."""
    state: dict[str, Any] = {"count": 0, "blob": b""}

    @feature.on_start
    async def _fill(ctx: Context) -> None:  # in the container: the Feature ships small
        state["blob"] = os.urandom(STATE_BYTES)

    @feature.service("add")
    async def _add(ctx: Context, request: Any) -> list[Any]:
        state["count"] += 1
        return [state["count"], version]

    @feature.export_state
    async def _export(ctx: Context) -> bytes:
        blob: bytes = state["blob"]
        return struct.pack("<Q", state["count"]) + blob

    @feature.import_state
    async def _import(ctx: Context, from_version: str, data: bytes) -> None:
        (state["count"],) = struct.unpack_from("<Q", data)
        state["blob"] = data[8:]
        if len(state["blob"]) != STATE_BYTES:
            raise ValueError(f"imported {len(state['blob'])} bytes of state from {from_version}")


def _crasher(feature: Feature) -> None:
    """A version whose ``add`` ends its container (exit 3) on every call."""

    @feature.service("add")
    async def _add(ctx: Context, request: Any) -> list[Any]:
        os._exit(3)


def _caller(feature: Feature) -> None:
    pacing = {"stop": False}

    @feature.service("stop")
    async def _stop(ctx: Context, request: Any) -> None:
        pacing["stop"] = True

    @feature.service("pace")
    async def _pace(ctx: Context, request: dict[str, Any]) -> list[list[Any]]:
        """Call counter.add ``rate`` times a second until ``stop`` (at most ``seconds``),
        each call in its own task; per call: its start (Unix time), latency (ns), and the
        error if it failed."""
        calls: list[list[Any]] = []
        rate, seconds = float(request["rate"]), float(request["seconds"])
        pacing["stop"] = False

        async def one() -> None:
            started, begin = time.time(), time.perf_counter_ns()
            try:
                await ctx.call("counter", "add", timeout=10)
                error = ""
            except Exception as exc:  # every failure is counted, and reported
                error = repr(exc)
            calls.append([started, time.perf_counter_ns() - begin, error])

        origin = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(int(rate * seconds)):
                if pacing["stop"]:
                    break
                await trio.sleep_until(origin + index / rate)
                nursery.start_soon(one)
        return calls

    @feature.service("until_old")
    async def _until_old(ctx: Context, request: dict[str, Any]) -> list[list[Any]]:
        """Call counter.add one call after the other until version ``old`` answers after
        ``crashes`` failed calls; per call: its completion (Unix time), answering version
        (None when it failed) and error."""
        calls: list[list[Any]] = []
        failed = 0
        deadline = trio.current_time() + 20
        while trio.current_time() < deadline:
            try:
                _, version = await ctx.call("counter", "add", timeout=10)
                calls.append([time.time(), version, ""])
                if failed >= request["crashes"] and version == request["old"]:
                    return calls
            except Exception as exc:  # the crashes this benchmark causes
                failed += 1
                calls.append([time.time(), None, repr(exc)])
        raise RuntimeError(f"the old version did not answer again within 20 s: {calls[-5:]}")


def build_app(
    root: Path, *, switches: int, rollbacks: int
) -> tuple[TestApp, list[Path], list[Path], Path]:
    """The app, the bundles to update to (good versions, crashing ones) and a plugin."""
    app = TestApp(root, name="updatebench")
    _counter(
        app.feature(
            "counter",
            limits=LIMITS,
            restart=RESTART,
            policy={"update": UPDATE_POLICY},
            faults=False,
        ),
        "1.0.0",
    )
    _caller(
        app.feature(
            "caller",
            requires=["counter"],
            limits=LIMITS,
            policy={"call": ["counter.add"]},
            faults=False,
        )
    )
    idle = app.feature("idle", faults=False)

    @idle.service("ping")
    async def _ping(ctx: Context, request: Any) -> Any:
        return request

    good = []
    for index in range(switches):
        version = app.version("counter", f"1.{index + 1}.0", faults=False)
        _counter(version, f"1.{index + 1}.0")
        good.append(version)
    bad = []
    for index in range(rollbacks):
        version = app.version("counter", f"9.{index}.0-crashes", faults=False)
        _crasher(version)
        bad.append(version)
    plugin = _plugin_bundle(root / "plugins" / "pinger")
    return app, [app.bundle(v) for v in good], [app.bundle(v) for v in bad], plugin


def _plugin_bundle(bundle: Path) -> Path:
    """A bundle of its own, not in app.toml: ``pinger``, answering ``ping``."""
    bundle.mkdir(parents=True)
    (bundle / "capsule.toml").write_text(
        '[feature]\nname = "pinger"\nversion = "1.0.0"\nentry = "pinger:feature"\n\n'
        '[provides]\nservices = ["ping"]\n',
        encoding="utf-8",
    )
    (bundle / "pinger.py").write_text(
        '"""Answers ping with its request."""\n\nfrom capsule.feature import Feature\n\n'
        "feature = Feature()\n\n\n"
        '@feature.service("ping")\nasync def ping(ctx, request):\n    return request\n',
        encoding="utf-8",
    )
    return bundle
