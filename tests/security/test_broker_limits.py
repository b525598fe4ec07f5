"""Issue 20 item 5: what one feature can make the broker hold is bounded by its app's limits.

A hostile feature subscribes the same pattern thousands of times, subscribes to more topics
than its limit, delegates more tokens than its limit, and stops reading its channel while
events are published to it. The host judges: how many frames one publish delivers, what the
feature's statistics say it holds, what the audit log says (one line per limit and second,
however many attempts), and what the slow reader is told once it reads again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel

from capsule import Supervisor
from capsule.errors import CapsuleError
from capsule.feature import Context
from capsule.testing import TestApp
from capsule.testing._broker_probes import probe

_SUBSCRIPTIONS = 8
_DELEGATIONS = 4
_QUEUE = 256 << 10


async def _ping(ctx: Context, request: Any) -> str:
    return "pong"


async def _freeze(ctx: Context, seconds: float) -> str:
    """Stop reading the channel: block the container's whole event loop for ``seconds``."""
    time.sleep(seconds)  # noqa: ASYNC251 - blocking is the attack
    return "thawed"


def _app(app: TestApp, *, lagged: str = "drop") -> TestApp:
    """attacker (subscribes, delegates and freezes, under small limits), dictionary and
    listener (which hears the attacker's topics, so publishes reach someone else too)."""
    dictionary = app.feature("dictionary")
    dictionary.service("lookup")(_ping)
    attacker = app.feature(
        "attacker",
        requires=["dictionary"],
        policy={
            "call": ["dictionary.lookup"],
            "subscribe": ["spell.*", "slow.*"],
            "limits": {
                "subscriptions": _SUBSCRIPTIONS,
                "delegations": _DELEGATIONS,
                "queue": _QUEUE,
                "lagged": lagged,
            },
        },
    )
    attacker.service("probe")(probe)
    attacker.service("freeze")(_freeze)

    async def ignore(ctx: Context, event: Any) -> None:
        pass

    attacker.on("slow.*")(ignore)
    listener = app.feature("listener", policy={"subscribe": ["spell.*"]})
    listener.service("ping")(_ping)
    listener.service("freeze")(_freeze)
    listener.on("spell.*")(ignore)
    return app


def _audit(app: TestApp) -> list[dict[str, Any]]:
    text = (app.root / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _limit_lines(app: TestApp, limit: str) -> list[dict[str, Any]]:
    return [e for e in _audit(app) if e["event"] == "limit" and e["limit"] == limit]


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    while not await check():  # noqa: ASYNC110 - the state lives in another process
        await trio.sleep(0.02)


def _overloaded(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": "OverloadedError", "reason": reason, "capability": ""}


def _stats(sup: Supervisor, feature: str) -> Any:
    return sup.statistics().features[feature]


@pytest.mark.trio
async def test_the_same_pattern_subscribed_thousands_of_times_is_one_subscription(
    capsule_app: TestApp,
) -> None:
    """One publish delivers one frame to a connection, however often it subscribed."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(60):
            answers = await sup.call(
                "attacker", "probe", {"op": "subscribe", "patterns": ["spell.checked"] * 3000}
            )
            reached = await sup.publish("spell.checked", "once")
            held = _stats(sup, "attacker")
            assert await sup.call("listener", "ping") == "pong"
    assert answers == {"spell.checked": {"ok": True}}  # every answer was ok
    assert reached == 2  # the attacker once, the listener once
    assert (held.subscriptions, held.subscriptions_limit) == (2, _SUBSCRIPTIONS)  # and slow.*


@pytest.mark.trio
async def test_subscriptions_past_the_limit_are_refused_and_audited_once(
    capsule_app: TestApp,
) -> None:
    """Past ``limits.subscriptions`` a subscription is refused with OverloadedError; the
    audit log has one line for the flood, with its count; the rest of the app goes on."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(60):
            patterns = [f"spell.t{i}" for i in range(200)]
            answers = await sup.call("attacker", "probe", {"op": "subscribe", "patterns": patterns})
            held = _stats(sup, "attacker")
            past = await sup.publish("spell.t199", "x")  # only the listener's spell.*
            within = await sup.publish("spell.t0", "x")
            again = await sup.call(
                "attacker", "probe", {"op": "subscribe", "patterns": ["spell.t0"]}
            )
            assert await sup.call("listener", "ping") == "pong"
    reason = (
        f"holds {_SUBSCRIPTIONS} subscriptions already "
        "(limits.subscriptions of [policy.attacker] in app.toml)"
    )
    room = _SUBSCRIPTIONS - 1  # its own listener holds slow.*
    assert [answers[p] for p in patterns[:room]] == [{"ok": True}] * room
    refused = [answers[p] for p in patterns[room:]]
    assert refused == [_overloaded(f"feature 'attacker': {reason}")] * len(refused)
    assert (held.subscriptions, held.subscriptions_limit) == (_SUBSCRIPTIONS, _SUBSCRIPTIONS)
    assert (past, within) == (1, 2)
    assert again == {"spell.t0": {"ok": True}}  # one it holds is no new one
    lines = _limit_lines(app, "subscriptions")
    assert 1 <= len(lines) <= 2, lines  # one per flush interval the flood spans
    assert sum(e["count"] for e in lines) == len(refused)
    assert all(e["feature"] == "attacker" and e["reason"] == reason for e in lines)
    assert not [e for e in _audit(app) if e["decision"] == "deny" and e["event"] == "subscribe"]


@pytest.mark.trio
async def test_delegations_past_the_limit_are_refused_until_one_is_revoked(
    capsule_app: TestApp,
) -> None:
    """Past ``limits.delegations`` live delegated tokens, delegating is refused (nothing is
    signed or sent); revoking one makes room for one more."""
    app = _app(capsule_app)
    lookup = "icc:call:dictionary.lookup"
    attempt = {"op": "delegate", "caps": lookup, "to": "listener"}
    async with app.open() as sup:
        with trio.fail_after(60):
            answers = [await sup.call("attacker", "probe", attempt) for _ in range(40)]
            held = _stats(sup, "attacker")
            given = [a["token_id"] for a in answers if a["ok"]]
            revoked = await sup.call("attacker", "probe", {"op": "revoke", "token_id": given[0]})
            again = await sup.call("attacker", "probe", attempt)
            after = _stats(sup, "attacker")
    reason = (
        f"holds {_DELEGATIONS} live delegated tokens already "
        "(limits.delegations of [policy.attacker] in app.toml)"
    )
    assert len(given) == _DELEGATIONS
    assert answers[_DELEGATIONS:] == [_overloaded(f"feature 'attacker': {reason}")] * (
        40 - _DELEGATIONS
    )
    assert (held.delegations, held.delegations_limit) == (_DELEGATIONS, _DELEGATIONS)
    assert revoked == {"ok": True, "revoked": 1}
    assert again["ok"], again
    assert after.delegations == _DELEGATIONS
    signed = [e for e in _audit(app) if e["decision"] == "delegate"]
    assert len(signed) == _DELEGATIONS + 1
    lines = _limit_lines(app, "delegations")
    assert 1 <= len(lines) <= 2, lines
    assert sum(e["count"] for e in lines) == 40 - _DELEGATIONS


@pytest.mark.trio
async def test_a_feature_that_stops_reading_holds_at_most_its_queue_and_is_told_it_lagged(
    capsule_app: TestApp,
) -> None:
    """Events to a container that does not read pile up to ``limits.queue`` bytes, no more;
    the rest are dropped and counted; once it reads again it is told how many it missed."""
    app = _app(capsule_app)
    payload = "x" * 2048
    async with app.open() as sup:
        with trio.fail_after(60):
            highest = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sup.call, "attacker", "freeze", 3.0)
                await trio.sleep(0.5)  # the call reached the container, which froze
                for i in range(4000):
                    await sup.publish("slow.event", payload)
                    if i % 100 == 0:
                        highest = max(highest, _stats(sup, "attacker").queued)
                        await trio.lowlevel.checkpoint()
                frozen = _stats(sup, "attacker")
            instance = sup.feature("attacker").instance
            assert instance is not None

            async def told() -> bool:
                return any("lagged: the broker dropped" in line for line in instance.logs)

            await _eventually(told)
            logs = list(instance.logs)
            assert await sup.call("attacker", "probe", {"op": "handles"})  # it goes on
    assert frozen.queue_limit == _QUEUE
    assert highest <= _QUEUE + len(payload) + 256, highest
    assert frozen.events_dropped > 1000
    notices = [line for line in logs if "lagged: the broker dropped" in line]
    assert f"({frozen.events_dropped} so far)" in notices[-1], notices
    lines = _limit_lines(app, "queue")
    assert 1 <= len(lines) <= 4, lines  # one per flush interval while it lagged
    assert sum(e["count"] for e in lines) == frozen.events_dropped


@pytest.mark.trio
async def test_a_feature_that_stops_reading_is_ended_when_its_policy_says_close(
    capsule_app: TestApp,
) -> None:
    """``lagged = "close"``: past its queue the container is ended, the audit says why."""
    app = _app(capsule_app, lagged="close")
    async with app.open() as sup:
        with trio.fail_after(60):
            first = sup.feature("attacker").instance
            assert first is not None
            async with trio.open_nursery() as nursery:

                async def freeze() -> None:
                    try:
                        await sup.call("attacker", "freeze", 3.0)
                    except CapsuleError:  # it is ended: the call fails
                        return

                nursery.start_soon(freeze)
                await trio.sleep(0.5)
                for _ in range(4000):
                    if first.ended.is_set():
                        break
                    await sup.publish("slow.event", "x" * 2048)
                    await trio.lowlevel.checkpoint()
                await first.ended.wait()
    ends = [e for e in _audit(app) if e["decision"] == "end" and e["feature"] == "attacker"]
    assert any(f"fell behind its events (over {_QUEUE} bytes queued)" in e["reason"] for e in ends)


@pytest.mark.trio
async def test_delegating_and_revoking_in_a_loop_leaves_nothing_behind_for_the_recipient(
    capsule_app: TestApp,
) -> None:
    """What the broker keeps for a recipient per delegated token goes with the revocation."""
    app = _app(capsule_app)
    attempt = {"op": "delegate", "caps": "icc:call:dictionary.lookup", "to": "listener"}
    async with app.open() as sup:
        with trio.fail_after(60):
            for _ in range(150):
                given = await sup.call("attacker", "probe", attempt)
                assert given["ok"], given
                answer = await sup.call(
                    "attacker", "probe", {"op": "revoke", "token_id": given["token_id"]}
                )
                assert answer == {"ok": True, "revoked": 1}
            recipient = sup.feature("listener").instance
            assert recipient is not None
            kept = len(recipient.peer.granted)
            held = _stats(sup, "attacker").delegations
    assert (kept, held) == (0, 0)


@pytest.mark.trio
async def test_tokens_revoked_before_their_recipient_presents_them_do_not_get_it_ended(
    capsule_app: TestApp,
) -> None:
    """A delegator that revokes each token before its recipient can present it must not make
    the recipient look like a container presenting invalid tokens (which is ended)."""
    app = _app(capsule_app)
    attempt = {"op": "delegate", "caps": "icc:call:dictionary.lookup", "to": "listener"}
    async with app.open() as sup:
        with trio.fail_after(60):
            before = sup.feature("listener").instance
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sup.call, "listener", "freeze", 2.0)
                await trio.sleep(0.3)  # the listener reads nothing until it thaws
                for _ in range(40):
                    given = await sup.call("attacker", "probe", attempt)
                    assert given["ok"], given
                    revoke = {"op": "revoke", "token_id": given["token_id"]}
                    assert (await sup.call("attacker", "probe", revoke))["ok"]

            async def all_presented() -> bool:
                return _stats(sup, "listener").denied >= 40

            await _eventually(all_presented)
            assert await sup.call("listener", "ping") == "pong"
            after = sup.feature("listener").instance
            restarts = sup.statistics().features["listener"].restarts
    refused = [e for e in _audit(app) if e["decision"] == "refuse" and e["feature"] == "listener"]
    assert (after is before, restarts) == (True, 0)
    assert len(refused) == 40
    assert all("is revoked" in e["reason"] for e in refused)
