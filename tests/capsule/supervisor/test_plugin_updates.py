"""What the app hears of a live update, and what a plugin added at run time allows: a
switch and a rollback announce ``capsule.service.up`` (``updated``, ``rolled-back``) with
the version that serves now; a plugin is not updated in place. Real containers."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import capsule.testing
from capsule import UpdateError
from capsule._broker._host import Subscription
from tests.capsule.supervisor.plugin_helpers import COUNTER, plugin_app, write_plugin
from tests.capsule.update_helpers import counter_app, counter_version


async def _payloads(events: Subscription, n: int) -> list[tuple[str, object]]:
    got = []
    with trio.fail_after(5):
        for _ in range(n):
            event = await events.receive()
            got.append((event.topic, event.payload))
    return got


@pytest.mark.trio
async def test_a_switch_and_a_rollback_announce_the_version_that_serves(tmp_path: Path) -> None:
    app = counter_app(tmp_path / "app", update={"probation": "30s", "keep": "60s"})
    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup, sup.subscribe("capsule.service.*") as events:
        await sup.update("counter", app.bundle(v2))
        await sup.rollback("counter")
        got = await _payloads(events, 2)
        with trio.move_on_after(0.3):  # nothing else: no down, no restarted
            extra = await events.receive()
            raise AssertionError(f"an extra service event: {extra}")
    up = "capsule.service.up"
    assert got == [
        (up, {"feature": "counter", "version": "2.0.0", "reason": "updated"}),
        (up, {"feature": "counter", "version": "1.0.0", "reason": "rolled-back"}),
    ]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_updating_a_plugin_is_refused_with_how_to_replace_it(tmp_path: Path) -> None:
    app = plugin_app(tmp_path, plugins={})
    first = write_plugin(tmp_path, "counter", COUNTER, services=("count",))
    second = write_plugin(
        tmp_path, "counter", COUNTER, services=("count",), version="1.1.0", directory="v2"
    )
    with trio.fail_after(30):
        async with app.open() as sup:
            await sup.install(first)
            with pytest.raises(
                UpdateError, match=r"capsule plugin remove counter; capsule plugin add"
            ):
                await sup.update("counter", second)
            with pytest.raises(UpdateError, match="plugin added at run time"):
                await sup.update("counter", second, dry_run=True)
            assert sup.feature("counter").manifest.version == "1.0.0"
            assert await sup.call("counter", "count", "a b") == 2
    assert capsule.testing.leftovers() == []
