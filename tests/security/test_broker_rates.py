"""The ``rate`` limit of icc capabilities, enforced by the broker on real containers.

A feature granted ``icc:call:dictionary.lookup?rate=N`` and ``icc:publish:spell.*?rate=N``
calls and publishes far past N: the calls past the rate fail with OverloadedError naming
the capability and the feature, the publishes past it never reach the subscriber, and both
are counted and audited. A feature under its rate is refused nothing, and the app goes on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from capsule.errors import OverloadedError
from capsule.feature import Context
from capsule.testing import TestApp

_RATE = 5
_TRIES = 40


async def _lookup(ctx: Context, request: Any) -> str:
    return "found"


async def _calls(ctx: Context, count: int) -> list[str]:
    """``count`` calls as fast as they go: "ok", or the OverloadedError's text."""
    answers: list[str] = []
    for _ in range(count):
        try:
            answers.append(await ctx.call("dictionary", "lookup", None))
        except OverloadedError as exc:
            answers.append(str(exc))
    return answers


async def _publishes(ctx: Context, count: int) -> int:
    for index in range(count):
        await ctx.publish("spell.checked", index)
    return count


def _app(app: TestApp) -> TestApp:
    dictionary = app.feature("dictionary")
    dictionary.service("lookup")(_lookup)
    for name, rate in (("hasty", _RATE), ("patient", 1000)):
        feature = app.feature(
            name,
            requires=["dictionary"],
            policy={
                "call": [f"dictionary.lookup?rate={rate}"],
                "publish": [f"spell.*?rate={rate}"],
            },
        )
        feature.service("calls")(_calls)
        feature.service("publishes")(_publishes)
    listener = app.feature("listener", policy={"subscribe": ["spell.*"]})
    heard = {"count": 0}

    async def hear(ctx: Context, event: Any) -> None:
        heard["count"] += 1

    async def count(ctx: Context, request: Any) -> int:
        return heard["count"]

    listener.on("spell.*")(hear)
    listener.service("count")(count)
    return app


def _limit_lines(app: TestApp) -> list[dict[str, Any]]:
    text = (app.root / "audit.jsonl").read_text(encoding="utf-8")
    events = [json.loads(line) for line in text.splitlines()]
    return [e for e in events if e["event"] == "limit" and e["limit"] == "rate"]


async def _heard(sup: Any, at_least: int) -> int:
    """The listener's count once it reached ``at_least`` (or stopped growing for 0.5 s)."""
    last, still = -1, 0
    while True:
        heard = int(await sup.call("listener", "count"))
        if heard >= at_least or (heard == last and still >= 25):
            return heard
        still = still + 1 if heard == last else 0
        last = heard
        await trio.sleep(0.02)


@pytest.mark.trio
async def test_calls_past_a_capabilitys_rate_are_refused_and_audited(
    capsule_app: TestApp,
) -> None:
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(60):
            hasty = await sup.call("hasty", "calls", _TRIES)
            patient = await sup.call("patient", "calls", _TRIES)
            denied = sup.statistics().features["hasty"].denied
            assert await sup.call("dictionary", "lookup") == "found"  # the app goes on
    took = [a for a in hasty if a == "found"]
    refused = [a for a in hasty if a != "found"]
    # a full bucket (5), plus what refilled while the 40 calls ran (5 a second)
    assert _RATE <= len(took) < _TRIES // 2, hasty
    assert refused, hasty
    capability = f"icc:call:dictionary.lookup?rate={_RATE}"
    assert set(refused) == {
        f"feature 'hasty': call 'dictionary.lookup' is over the rate of {capability} "
        f"({_RATE} a second)"
    }
    assert patient == ["found"] * _TRIES
    assert denied >= len(refused)
    lines = _limit_lines(app)
    assert {e["feature"] for e in lines} == {"hasty"}
    assert sum(e["count"] for e in lines) == len(refused)
    assert all(capability in e["reason"] and e["decision"] == "deny" for e in lines)


@pytest.mark.trio
async def test_publishes_past_a_capabilitys_rate_are_dropped_counted_and_audited(
    capsule_app: TestApp,
) -> None:
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(60):
            await sup.call("patient", "publishes", _TRIES)
            patient = await _heard(sup, _TRIES)
            await sup.call("hasty", "publishes", _TRIES)
            total = await _heard(sup, patient + _TRIES)
            denied = sup.statistics().features["hasty"].denied
            assert await sup.call("patient", "calls", 1) == ["found"]  # the app goes on
    hasty = total - patient
    assert patient == _TRIES  # under its rate: every event arrived
    assert _RATE <= hasty < _TRIES // 2
    dropped = _TRIES - hasty
    assert denied == dropped
    lines = _limit_lines(app)
    assert {e["feature"] for e in lines} == {"hasty"}
    assert sum(e["count"] for e in lines) == dropped
    capability = f"icc:publish:spell.*?rate={_RATE}"
    assert all(capability in e["reason"] and "dropped" in e["reason"] for e in lines)
