"""What reaches a feature while its route switches versions: a delegation to it waits
for the switch, as a call does, and its token goes to the new version. Real containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import Supervisor
from capsule._container._feature import Context
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import wait_until
from tests.capsule.update_helpers import counter, counter_app


def _slow_export(app: TestApp, seconds: float) -> None:
    """The running version takes ``seconds`` to export its state: the hold lasts as long."""
    v1 = app.inline["counter"]
    exported = v1.state_export
    assert exported is not None

    async def _export(ctx: Context) -> bytes:
        await trio.sleep(seconds)
        return await exported(ctx)

    v1.state_export = _export


def _moving_state(sup: Supervisor) -> bool:
    return (sup.feature("counter").update or "").endswith("(moving state)")


@pytest.mark.trio
async def test_a_delegation_during_the_hold_of_a_switch_waits_and_reaches_the_new_version(
    tmp_path: Path,
) -> None:
    app = counter_app(tmp_path / "app", client=True)
    _slow_export(app, 0.5)

    @app.inline["client"].service("give")
    async def _give(ctx: Context, request: Any) -> str:
        return await ctx.delegate("icc:call:counter.add", to="counter", ttl=60)

    v2 = app.version("counter", "2.0.0")
    counter(v2, "2.0.0")
    async with app.open() as sup:
        given: dict[str, str] = {}

        async def give() -> None:
            await wait_until(lambda: _moving_state(sup), "the update holds calls")
            given["token"] = await sup.call("client", "give", timeout=10)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(give)
                report = await sup.update("counter", app.bundle(v2))
        assert report.pause >= 0.4
        handle = sup.feature("counter")
        assert handle.manifest.version == "2.0.0"
        await wait_until(
            lambda: given["token"] in {t.token_id for t in handle.tokens()},
            "the new version holds the delegated token",
        )
    assert capsule.testing.leftovers() == []
