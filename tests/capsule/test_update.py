"""Live updates: make before break under load, the state handoff and its failures, a dry
run, approval of a widening, and one update at a time. Real containers throughout; calls
come from another feature's container as well as from the host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import ConfigError, FeatureState, UpdateError, UpdateRefusedError
from capsule._container._feature import Context
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import wait_until
from tests.capsule.update_helpers import audit_events, count, counter, counter_app


@pytest.mark.trio
async def test_an_update_under_load_from_a_container_drops_no_call_and_keeps_the_state(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", client=True)
    v2 = app.version("counter", "2.0.0")
    counter(v2, "2.0.0")
    async with app.open() as sup:
        old_pid = sup.feature("counter").statistics().pid
        outcome: dict[str, Any] = {}

        async def run_pump() -> None:
            request = {"n": 1500, "pause": 0.002}
            outcome.update(await sup.call("client", "pump", request, timeout=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            await wait_until_count(sup, 50)
            report = await sup.update("counter", app.bundle(v2))
            during = await count(sup)
        assert during["count"] < 1500  # the pump was still at work after the switch
        assert outcome["errors"] == []
        after = await count(sup)
        # every add reached one version or the other, and the count went across
        assert after == {"count": outcome["done"], "version": "2.0.0"}
        assert report.from_version == "1.0.0"
        assert report.to_version == "2.0.0"
        assert report.state_bytes is not None and report.state_bytes > 0
        stats = sup.feature("counter").statistics()
        assert stats.version == "2.0.0"
        assert stats.pid != old_pid
    events = audit_events(app.root / "audit.jsonl", "update-")
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["update-start", "update-switch"]
    switch = events[1]
    assert switch["pause_ms"] >= 0
    assert switch["state_bytes"] == report.state_bytes
    assert capsule.testing.leftovers() == []


async def wait_until_count(sup: Any, goal: int) -> None:
    async def reached() -> bool:
        return (await count(sup))["count"] >= goal

    with trio.fail_after(20):
        while not await reached():
            await trio.sleep(0.01)
