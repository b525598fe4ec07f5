"""A feature's route switching versions and its old version kept frozen: a delegation to
it during the switch waits, as a call does, and its token goes to the new version; the
frozen old version's tokens outlast the keep window, so a rollback late in it still
finds them (and its file mounts) valid. Real containers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import Supervisor
from capsule._container._feature import Context
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import wait_until
from tests.capsule.update_helpers import audit_events, counter_app, counter_version


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

    v2 = counter_version(app, "2.0.0")
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


@pytest.mark.trio
async def test_a_rollback_after_a_keep_window_longer_than_the_token_lifetime_still_works(
    tmp_path: Path,
) -> None:
    # tokens live 1 s; the old version stays frozen 3 s before the rollback: nothing renews
    # it meanwhile (its file-system server is frozen too), yet it comes back with its state,
    # its file mount and tokens valid
    files = {"fs": [{"path": "/words", "volume": "words", "mode": "ro"}]}
    app = counter_app(tmp_path / "app", update={"probation": "200ms", "keep": "30s"}, policy=files)
    app.volume("words", {"list.txt": "alpha\n"})

    @app.inline["counter"].service("read")
    async def _read(ctx: Context, request: Any) -> str:
        with open("/words/list.txt", encoding="utf-8") as f:  # noqa: ASYNC230 - a few bytes, in the container
            return f.read()

    v2 = counter_version(app, "2.0.0")
    async with app.open(token_ttl=1.0) as sup:
        handle = sup.feature("counter")
        old_pid = handle.statistics().pid
        await sup.call("counter", "add")
        await sup.update("counter", app.bundle(v2))
        await wait_until(lambda: (handle.update or "").endswith("(keep)"), "the keep window")
        failed_before = handle.statistics().renewals_failed
        await trio.sleep(3.0)  # three token lifetimes, frozen
        report = await sup.rollback("counter")
        assert not report.cold
        assert handle.statistics().pid == old_pid
        assert await sup.call("counter", "get") == {"count": 1, "version": "1.0.0"}
        assert await sup.call("counter", "read") == "alpha\n"
        assert all(t.expires > time.time() for t in handle.tokens())
        assert handle.tokens()
        await trio.sleep(1.5)  # renewed on time again once thawed
        assert await sup.call("counter", "read") == "alpha\n"
        assert handle.statistics().renewals_failed == failed_before
        assert handle.renewal_error is None
    failed = [e for e in audit_events(app.root / "audit.jsonl", "renew") if e["decision"] == "fail"]
    assert failed == []
    assert capsule.testing.leftovers() == []
