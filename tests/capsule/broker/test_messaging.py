"""Messaging through the broker with real containers: calls between features, pub/sub with
patterns, streams with backpressure, delegation, deadlines and the host's own authority."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from capsule import (
    CapabilityDeniedError,
    ConfigError,
    FeatureTimeoutError,
    FeatureUnavailableError,
    RemoteError,
)
from capsule._container._feature import Context
from capsule.testing import TestApp


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def notes_app(tmp_path: Path) -> TestApp:
    """dictionary <- spellcheck <- editor, with the grants a notes app would have."""
    app = TestApp(tmp_path)
    dictionary = app.feature("dictionary")
    spell = app.feature(
        "spellcheck",
        requires=["dictionary"],
        policy={"call": ["dictionary.lookup", "dictionary.count"], "publish": ["spell.*"]},
    )
    editor = app.feature(
        "editor",
        requires=["spellcheck"],
        policy={
            "call": ["spellcheck.check", "spellcheck.give", "dictionary.slow"],
            "subscribe": ["spell.*"],
        },
    )
    heard: list[Any] = []
    calls: list[str] = []

    @dictionary.service("lookup")
    async def lookup(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        calls.append("lookup")
        return {"known": sorted(request["words"])[:1], "caller": ctx.caller}

    @dictionary.service("add")
    async def add(ctx: Context, request: Any) -> None:
        calls.append("add")

    @dictionary.service("calls")
    async def calls_made(ctx: Context, request: Any) -> list[str]:
        return calls

    @dictionary.service("count")
    async def count(ctx: Context, request: dict[str, Any]) -> AsyncIterator[int]:
        for i in range(request["n"]):
            yield i

    @dictionary.service("slow")
    async def slow(ctx: Context, request: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            calls.append("slow cancelled")

    @spell.service("check")
    async def check(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        reply = await ctx.call("dictionary", "lookup", {"words": request["text"].split()})
        await ctx.publish("spell.checked", {"known": reply["known"]})
        return dict(reply)

    @spell.service("try")
    async def attempt(ctx: Context, request: dict[str, Any]) -> str:
        try:
            await ctx.call(request["feature"], request["service"], None)
        except CapabilityDeniedError as exc:
            return f"denied: {exc.capability}"
        return "allowed"

    @spell.service("publish-other")
    async def publish_other(ctx: Context, request: Any) -> str:
        try:
            await ctx.publish("editor.changed", {})
        except CapabilityDeniedError as exc:
            return f"denied: {exc.capability}"
        return "allowed"

    @spell.service("give")
    async def give(ctx: Context, request: dict[str, Any]) -> str:
        return await ctx.delegate(request["caps"], to="editor", ttl=request.get("ttl"))

    @spell.service("take-back")
    async def take_back(ctx: Context, token_id: str) -> int:
        return await ctx.revoke(token_id)

    @spell.service("sum")
    async def total(ctx: Context, request: dict[str, Any]) -> int:
        async with ctx.stream("dictionary", "count", {"n": request["n"]}, window=2) as items:
            return sum([item async for item in items])

    @editor.on("spell.*")
    async def on_spell(ctx: Context, event: Any) -> None:
        heard.append({"event": event, "sender": ctx.caller})

    @editor.service("heard")
    async def heard_events(ctx: Context, request: Any) -> list[Any]:
        return heard

    @editor.service("lookup")
    async def editor_lookup(ctx: Context, request: Any) -> Any:
        return await ctx.call("dictionary", "lookup", {"words": ["x"]})

    @editor.service("slow")
    async def editor_slow(ctx: Context, request: Any) -> Any:
        return await ctx.call("dictionary", "slow", None, timeout=0.3)

    @editor.service("held")
    async def held(ctx: Context, request: Any) -> list[str]:
        return list(ctx.capabilities)

    return app


async def wait_for(predicate: Any, what: str) -> None:
    with trio.fail_after(5):
        while not await predicate():  # noqa: ASYNC110 - the state lives in another process
            await trio.sleep(0.01)


@pytest.mark.trio
async def test_a_feature_calls_another_and_the_callee_sees_the_verified_caller(
    tmp_path: Path,
) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            reply = await sup.call("spellcheck", "check", {"text": "helo wrld"})
            assert reply == {"known": ["helo"], "caller": "spellcheck"}
            assert (await sup.call("dictionary", "lookup", {"words": ["a"]}))["caller"] == "@host"


@pytest.mark.trio
async def test_a_call_outside_the_grant_is_denied_named_and_never_delivered(
    tmp_path: Path,
) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            answer = await sup.call(
                "spellcheck", "try", {"feature": "dictionary", "service": "add"}
            )
            assert answer == "denied: icc:call:dictionary.add"
            assert "add" not in await sup.call("dictionary", "calls")
            assert sup.feature("spellcheck").statistics().denied == 1
    denials = [e for e in audit_lines(tmp_path / "audit.jsonl") if e["decision"] == "deny"]
    assert [(e["feature"], e["capability"]) for e in denials] == [
        ("spellcheck", "icc:call:dictionary.add")
    ]


@pytest.mark.trio
async def test_an_exception_in_a_handler_comes_back_as_remote_error_data(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    broken = app.feature("broken")
    caller = app.feature("caller", requires=["broken"], policy={"call": ["broken.fail"]})

    @broken.service("fail")
    async def fail(ctx: Context, request: Any) -> None:
        raise KeyError("no such note")

    @caller.service("go")
    async def go(ctx: Context, request: Any) -> dict[str, str]:
        try:
            await ctx.call("broken", "fail")
        except RemoteError as exc:
            return {"type": exc.remote_type, "traceback": exc.remote_traceback}
        return {}

    async with app.open() as sup:
        with trio.fail_after(10):
            seen = await sup.call("caller", "go")
            assert seen["type"] == "KeyError"
            assert "no such note" in seen["traceback"]
            with pytest.raises(RemoteError) as raised:
                await sup.call("broken", "fail")
            assert raised.value.remote_type == "KeyError"


@pytest.mark.trio
async def test_events_reach_pattern_subscribers_with_their_sender(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            async with sup.subscribe("spell.*") as events:
                await sup.call("spellcheck", "check", {"text": "b a"})
                event = await events.receive()
            assert (event.topic, event.payload, event.sender) == (
                "spell.checked",
                {"known": ["a"]},
                "spellcheck",
            )

            async def editor_heard() -> bool:
                return len(await sup.call("editor", "heard")) == 1

            await wait_for(editor_heard, "the editor's listener")
            heard = await sup.call("editor", "heard")
            assert heard == [{"event": {"known": ["a"]}, "sender": "spellcheck"}]
            assert await sup.publish("spell.host", 7) == 1  # the editor; the host left

            async def host_event_heard() -> bool:
                return len(await sup.call("editor", "heard")) == 2

            await wait_for(host_event_heard, "the host's event")
            assert (await sup.call("editor", "heard"))[1] == {"event": 7, "sender": "@host"}


@pytest.mark.trio
async def test_publishing_outside_the_grant_is_denied_and_not_delivered(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup, sup.subscribe("editor.*") as events:
        with trio.fail_after(10):
            assert await sup.call("spellcheck", "publish-other") == (
                "denied: icc:publish:editor.changed"
            )
            await sup.publish("editor.marker", None)
            assert (await events.receive()).topic == "editor.marker"  # nothing came before it


@pytest.mark.trio
async def test_host_names_are_checked(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with pytest.raises(ConfigError, match="topic"):
            await sup.publish("Spell.Checked", None)
        with pytest.raises(ConfigError, match="pattern"):
            sup.subscribe("spell.*.x")


@pytest.mark.trio
async def test_a_stream_is_iterated_with_backpressure(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            async with sup.stream("dictionary", "count", {"n": 50}, window=3) as items:
                values = [value async for value in items]
            assert values == list(range(50))
            assert await sup.call("spellcheck", "sum", {"n": 20}) == sum(range(20))
            first: list[int] = []
            async with sup.stream("dictionary", "count", {"n": 10_000}, window=4) as items:
                async for value in items:
                    first.append(value)
                    if len(first) == 5:
                        break  # leaving early cancels the rest in the callee
            assert first == [0, 1, 2, 3, 4]
            assert await sup.call("dictionary", "lookup", {"words": ["z"]})  # still serving


@pytest.mark.trio
async def test_delegation_narrows_and_revocation_takes_effect_at_once(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            with pytest.raises(RemoteError, match=r"icc:call:dictionary\.lookup"):
                await sup.call("editor", "lookup")
            with pytest.raises(RemoteError, match="CapabilityDeniedError"):
                await sup.call("spellcheck", "give", {"caps": "icc:call:dictionary.*"})
            token_id = await sup.call(
                "spellcheck", "give", {"caps": "icc:call:dictionary.lookup", "ttl": 60}
            )

            async def editor_holds_it() -> bool:
                return "icc:call:dictionary.lookup" in await sup.call("editor", "held")

            await wait_for(editor_holds_it, "the delegated token")
            assert (await sup.call("editor", "lookup"))["caller"] == "editor"
            assert token_id in {t.token_id for t in sup.feature("editor").tokens()}
            assert await sup.call("spellcheck", "take-back", token_id) == 1
            with pytest.raises(RemoteError, match="revoked"):
                await sup.call("editor", "lookup")
    kinds = {(e["event"], e["decision"]) for e in audit_lines(tmp_path / "audit.jsonl")}
    assert {("delegate", "delegate"), ("delegate", "deny"), ("revoke", "revoke")} <= kinds


@pytest.mark.trio
async def test_a_deadline_cancels_the_callee_and_the_caller_gets_a_timeout(
    tmp_path: Path,
) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            with pytest.raises(RemoteError, match="FeatureTimeoutError"):
                await sup.call("editor", "slow")

            async def cancelled() -> bool:
                return "slow cancelled" in await sup.call("dictionary", "calls")

            await wait_for(cancelled, "the cancellation")
            with pytest.raises(FeatureTimeoutError):
                await sup.call("dictionary", "slow", timeout=0.2)


@pytest.mark.trio
async def test_calls_to_a_stopped_feature_fail_at_once(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        await sup.stop("dictionary")
        with trio.fail_after(2):
            with pytest.raises(RemoteError, match="FeatureUnavailableError"):
                await sup.call("spellcheck", "check", {"text": "a"})
            with pytest.raises(FeatureUnavailableError):
                await sup.call("dictionary", "lookup", {"words": []})


@pytest.mark.trio
async def test_a_delegated_token_dies_with_the_container_it_was_given_to(tmp_path: Path) -> None:
    app = notes_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(10):
            token_id = await sup.call(
                "spellcheck", "give", {"caps": "icc:call:dictionary.lookup", "ttl": 60}
            )
            await sup.restart("editor")
            assert token_id not in {t.token_id for t in sup.feature("editor").tokens()}
            with pytest.raises(RemoteError, match="CapabilityDeniedError"):
                await sup.call("editor", "lookup")
    revoked = {
        e["token"] for e in audit_lines(tmp_path / "audit.jsonl") if e["decision"] == "revoke"
    }
    assert token_id in revoked
