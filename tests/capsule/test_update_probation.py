"""Probation under load: the calls held across a switch reach the new version at once and
queue up in it, which says nothing of the new version; its latency is judged once that
backlog has drained, so a good version passes and a slow one still fails. Real
containers; the calls come from another feature's container at a steady high rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import Supervisor
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, wait_until
from tests.capsule.update_helpers import audit_events, counter_app, counter_version

RATE = 1000.0  # calls a second, each in its own task
#: a whole CPU: at RATE, LIMITS' fifth of one keeps the counter throttled (its baseline too)
BUSY = {**LIMITS, "cpu": 1.0}


def _slow_export(app: TestApp, seconds: float) -> None:
    """The running version takes ``seconds`` to export its state: a backlog of about
    RATE * ``seconds`` calls is held, then released into the new version at once."""
    v1 = app.inline["counter"]
    exported = v1.state_export
    assert exported is not None

    async def _export(ctx: Context) -> bytes:
        await trio.sleep(seconds)
        return await exported(ctx)

    v1.state_export = _export


async def _update_under_load(
    sup: Supervisor, app: TestApp, v2: Feature, seconds: float, rate: float = RATE
) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    async def pace() -> None:
        request = {"rate": rate, "seconds": seconds}
        outcome.update(await sup.call("client", "pace", request, timeout=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pace)
        await trio.sleep(1.0)  # the old version's baseline, at this rate
        report = await sup.update("counter", app.bundle(v2))
        outcome["held"] = report.held
    return outcome


@pytest.mark.trio
async def test_an_update_at_a_steady_high_call_rate_passes_the_default_probation(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", client=True, update={"probation": "1s"}, limits=BUSY)
    _slow_export(app, 0.1)
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        handle = sup.feature("counter")
        outcome = await _update_under_load(sup, app, v2, 3.0)
        await wait_until(lambda: handle.update != "1.0.0 -> 2.0.0 (probation)", "probation ended")
        assert outcome["errors"] == []
        assert outcome["held"] > 10  # a real backlog went into the new version at once
        assert (handle.manifest.version, handle.update) == ("2.0.0", "1.0.0 -> 2.0.0 (keep)")
    assert audit_events(app.root / "audit.jsonl", "update-rollback") == []
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_slow_version_at_a_steady_high_call_rate_still_rolls_back_on_p99(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", client=True, update={"probation": "3s"}, limits=BUSY)
    _slow_export(app, 0.1)
    v2 = counter_version(app, "2.0.0")
    del v2.services["add"]

    @v2.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        await trio.sleep(0.2)  # every call: far over three times any baseline under load
        return 0

    async with app.open() as sup:
        # at half the rate: the client's calls in flight stay under its limit of 256
        outcome = await _update_under_load(sup, app, v2, 3.0, RATE / 2)
        assert outcome["errors"] == []
        handle = sup.feature("counter")
        await wait_until(lambda: handle.manifest.version == "1.0.0", "it rolled back", limit=10)
    (rollback,) = audit_events(app.root / "audit.jsonl", "update-rollback")
    assert rollback["reason"].startswith("p99 latency ")
    assert rollback["p99_ms"] >= 200
    assert rollback["settled"] > 0
