"""THREATS.md "Broker and tokens" (items 21-27), attacked from inside real containers.

Hostile feature code speaks to the broker through its client's private methods and writes raw
bytes to its channel (capsule.testing._broker_probes, which travels by reference). Each attack
is refused; the refusal is in the audit log with the feature, the capability and the reason;
the receiver never sees the message (the targets record what reaches them and the host asks);
and the rest of the app keeps answering.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import msgspec
import pytest
import trio
import trio.testing

from capsule import (
    FeatureCrashedError,
    FeatureTimeoutError,
    OverloadedError,
    RemoteError,
    Supervisor,
)
from capsule._broker._broker import MAX_IN_FLIGHT
from capsule._ipc._messages import Publish
from capsule._supervisor._supervisor import HeldToken
from capsule._tokens._format import decode_text, encode_text
from capsule.feature import Context
from capsule.testing import TestApp, crash
from capsule.testing._broker_probes import (
    FRAMES,
    innocent_frame,
    probe,
    send_with_fd,
    shut_channel,
    write_raw,
)
from capsule.tokens import KeyRing, TokenAuthority
from tests.security._host import RESTART_AT_ONCE

#: descriptors a container made for the attack that passes one (one process per container).
_PIPE: list[int] = []

_NOT_VALID = "is not a valid {} target (ASCII lower-case names only)"

# --- run inside the containers (shipped by value with the handlers) ---------------------------


async def _raw(ctx: Context, attack: str) -> None:
    """Break the protocol as ``attack`` says, then wait for the supervisor to end us."""
    if attack == "fd":
        send_with_fd(innocent_frame(), _PIPE[1])
    else:
        write_raw(FRAMES[attack]())
        if attack == "truncated":
            shut_channel()
    await trio.sleep_forever()


async def _pipe(ctx: Context, request: Any) -> int:
    """Make the pipe whose write end the ``fd`` attack passes; returns its inode."""
    _PIPE[:] = os.pipe()
    return os.fstat(_PIPE[1]).st_ino


async def _ping(ctx: Context, request: Any) -> str:
    return "pong"


def _recorder(seen: list[list[Any]], service: str) -> Callable[[Context, Any], Awaitable[str]]:
    async def handler(ctx: Context, request: Any) -> str:
        seen.append([service, ctx.caller])
        return service

    return handler


# --- the apps ---------------------------------------------------------------------------------


def _app(app: TestApp) -> TestApp:
    """dictionary (records every call it receives), attacker, victim and quiet.

    The attacker may call dictionary.lookup, publish spell.* and subscribe spell.checked; the
    victim may call lookup and secret, publish and subscribe news.sports and listens on spell.*
    and editor.*; quiet only calls lookup and answers ping (it shows that the app goes on).
    """
    dictionary = app.feature("dictionary")
    seen: list[list[Any]] = []
    for service in ("lookup", "secret"):
        dictionary.service(service)(_recorder(seen, service))

    @dictionary.service("seen")
    async def _seen(ctx: Context, request: Any) -> list[list[Any]]:
        return seen

    attacker = app.feature(
        "attacker",
        requires=["dictionary"],
        restart=RESTART_AT_ONCE,
        policy={
            "call": ["dictionary.lookup"],
            "publish": ["spell.*"],
            "subscribe": ["spell.checked"],
        },
    )
    attacker.service("probe")(probe)
    attacker.service("raw")(_raw)
    attacker.service("pipe")(_pipe)

    victim = app.feature(
        "victim",
        requires=["dictionary"],
        policy={
            "call": ["dictionary.lookup", "dictionary.secret"],
            "publish": ["news.sports"],
            "subscribe": ["news.sports", "spell.*", "editor.*"],
        },
    )
    victim.service("probe")(probe)
    heard: list[Any] = []

    async def listen(ctx: Context, event: Any) -> None:
        heard.append(event)

    victim.on("spell.*")(listen)
    victim.on("editor.*")(listen)

    @victim.service("heard")
    async def _heard(ctx: Context, request: Any) -> list[Any]:
        return heard

    quiet = app.feature("quiet", requires=["dictionary"], policy={"call": ["dictionary.lookup"]})
    quiet.service("ping")(_ping)

    @quiet.service("lookup")
    async def _lookup(ctx: Context, request: Any) -> Any:
        return await ctx.call("dictionary", "lookup")

    return app


# --- host-side helpers ------------------------------------------------------------------------


def _audit(app: TestApp) -> list[dict[str, Any]]:
    text = (app.root / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _decided(app: TestApp, decision: str, feature: str) -> list[dict[str, Any]]:
    return [e for e in _audit(app) if e["decision"] == decision and e["feature"] == feature]


def _only_token(sup: Supervisor, feature: str) -> HeldToken:
    tokens = sup.feature(feature).tokens()
    assert len(tokens) == 1, tokens
    return tokens[0]


def _denied(reason: str, capability: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": "CapabilityDeniedError",
        "reason": reason,
        "capability": capability,
    }


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (the caller's fail_after is the deadline)."""
    while not await check():  # noqa: ASYNC110 - the state lives in another process
        await trio.sleep(0.02)


async def _holds(sup: Supervisor, feature: str, token_id: str) -> None:
    """Wait until ``feature``'s container itself has admitted ``token_id`` (a delegated token)."""

    async def admitted() -> bool:
        return token_id in await sup.call(feature, "probe", {"op": "handles"})

    await _eventually(admitted)


async def _app_goes_on(sup: Supervisor) -> None:
    assert await sup.call("quiet", "ping") == "pong"
    assert await sup.call("quiet", "lookup") == "lookup"


def _lookup_call() -> dict[str, Any]:
    return {"op": "call", "feature": "dictionary", "service": "lookup"}


def _request(feature: str, service: str, handle: int | str | None = None) -> dict[str, Any]:
    return {"op": "request", "feature": feature, "service": service, "handle": handle}


# --- 21: tokens ------------------------------------------------------------------------------


@pytest.mark.trio
async def test_forged_tampered_and_truncated_tokens_are_refused_at_admission(
    capsule_app: TestApp,
) -> None:
    """THREATS 21: a token signed by another key, changed in one byte or cut short gives nothing."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            own = _only_token(sup, "attacker")
            raw = decode_text(own.text)
            assert raw is not None
            flipped = bytearray(raw)
            flipped[-1] ^= 0x01  # the last byte of the signed body
            wanted = ["icc:call:dictionary.*"]
            presented = {
                "forged": TokenAuthority(KeyRing.generate()).mint("attacker", wanted).text,
                "forged, other epoch": TokenAuthority(KeyRing.generate(epoch=7))
                .mint("attacker", wanted)
                .text,
                "tampered": encode_text(bytes(flipped)),
                "truncated": own.text[: len(own.text) // 2],
                "empty": "",
            }
            answers = {
                name: await sup.call("attacker", "probe", {"op": "admit", "token": text})
                for name, text in presented.items()
            }
            # it holds what it held before, so the secret stays out of reach
            assert [t.token_id for t in sup.feature("attacker").tokens()] == [own.token_id]
            secret = await sup.call("attacker", "probe", _request("dictionary", "secret"))
            await _app_goes_on(sup)
            seen = await sup.call("dictionary", "seen")

    refused = {
        "ok": False,
        "error": "InvalidTokenError",
        "reason": "invalid token",
        "capability": "",
    }
    assert answers == dict.fromkeys(presented, refused)
    assert secret == _denied(
        f"no capability of token {own.token_id} covers it", "icc:call:dictionary.secret"
    )
    assert seen == [["lookup", "quiet"]]
    reasons = [e["reason"] for e in _decided(app, "refuse", "attacker")]
    assert reasons[:3] == [
        "bad signature",
        "key epoch 7 is not the current epoch 1",
        "bad signature",
    ]
    assert len(reasons) == 5
    assert all(reasons[3:]), reasons
    assert {e["event"] for e in _decided(app, "refuse", "attacker")} == {"admit"}
    assert sup.statistics().features["quiet"].denied == 0


@pytest.mark.trio
async def test_another_features_token_and_handle_numbers_give_nothing(
    capsule_app: TestApp,
) -> None:
    """THREATS 21: a token is bound to its audience, a handle to the connection it was issued on."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            stolen_token = _only_token(sup, "victim")
            stolen = await sup.call(
                "attacker", "probe", {"op": "admit", "token": stolen_token.text}
            )
            victim_handles = list((await sup.call("victim", "probe", {"op": "handles"})).values())
            own_handles = list((await sup.call("attacker", "probe", {"op": "handles"})).values())
            guesses = [2, 4, 0x7FFF_FFFE, 1 << 31, 1 << 62, *victim_handles]
            assert not set(guesses) & set(own_handles)
            answers = [
                await sup.call("attacker", "probe", _request("dictionary", "secret", guess))
                for guess in guesses
            ]
            control = await sup.call("victim", "probe", _request("dictionary", "secret"))
            await _app_goes_on(sup)
            seen = await sup.call("dictionary", "seen")

    assert stolen["error"] == "InvalidTokenError"
    assert answers == [
        _denied(f"handle {guess} was not issued on this connection", "icc:call:dictionary.secret")
        for guess in guesses
    ]
    assert control == {"ok": True, "value": "secret"}
    assert seen == [["secret", "victim"], ["lookup", "quiet"]]
    [refusal] = _decided(app, "refuse", "attacker")
    assert refusal["reason"] == (
        f"token {stolen_token.token_id} is for 'victim', presented as 'attacker'"
    )
    denials = [
        (e["event"], e["capability"], e["handle"], e["reason"])
        for e in _decided(app, "deny", "attacker")
    ]
    assert denials == [
        (
            "call",
            "icc:call:dictionary.secret",
            guess,
            f"handle {guess} was not issued on this connection",
        )
        for guess in guesses
    ]


@pytest.mark.trio
async def test_an_expired_token_is_denied_on_use_and_refused_on_admission(
    capsule_app: TestApp,
) -> None:
    """THREATS 21: expiry is checked on every message, not only when a token is admitted."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            given = await sup.call(
                "victim",
                "probe",
                {"op": "delegate", "caps": "icc:call:dictionary.secret", "to": "attacker",
                 "ttl": 0.5},
            )  # fmt: skip
            assert given["ok"], given
            token_id = given["token_id"]
            await _holds(sup, "attacker", token_id)
            [token] = [t for t in sup.feature("attacker").tokens() if t.token_id == token_id]

            async def expired() -> bool:
                return time.time() > token.expires

            await _eventually(expired)
            used = await sup.call("attacker", "probe", _request("dictionary", "secret", token_id))
            readmitted = await sup.call("attacker", "probe", {"op": "admit", "token": token.text})
            await _app_goes_on(sup)
            seen = await sup.call("dictionary", "seen")

    assert used == _denied(f"token {token_id} expired", "icc:call:dictionary.secret")
    assert readmitted["error"] == "InvalidTokenError"
    assert seen == [["lookup", "quiet"]]
    [denial] = _decided(app, "deny", "attacker")
    assert (denial["token"], denial["capability"], denial["reason"]) == (
        token_id,
        "icc:call:dictionary.secret",
        f"token {token_id} expired",
    )
    [refusal] = _decided(app, "refuse", "attacker")
    assert refusal["reason"].startswith(f"token {token_id} expired at ")


@pytest.mark.trio
async def test_after_a_restart_the_old_token_and_handle_numbers_are_worthless(
    capsule_app: TestApp,
) -> None:
    """THREATS 21 and 24: each container gets fresh tokens; its predecessor's are revoked."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(30):
            restarts: list[Callable[[], Awaitable[Any]]] = [
                lambda: crash(sup, "attacker"),  # restarted by its policy
                lambda: sup.restart("attacker"),  # restarted on request
            ]
            olds: list[HeldToken] = []
            replays: list[dict[str, Any]] = []
            reuses: list[tuple[int, dict[str, Any]]] = []
            for restart in restarts:
                old = _only_token(sup, "attacker")
                olds.append(old)
                old_handles = list(
                    (await sup.call("attacker", "probe", {"op": "handles"})).values()
                )
                await restart()
                await sup.feature("attacker").wait_ready(10)
                assert _only_token(sup, "attacker").token_id != old.token_id
                replays.append(
                    await sup.call("attacker", "probe", {"op": "admit", "token": old.text})
                )
                for handle in old_handles:
                    answer = await sup.call(
                        "attacker", "probe", _request("dictionary", "lookup", handle)
                    )
                    reuses.append((handle, answer))
                fresh = await sup.call("attacker", "probe", _lookup_call())
                assert fresh == {"ok": True, "value": "lookup"}
            await _app_goes_on(sup)
            seen = await sup.call("dictionary", "seen")

    assert [r["error"] for r in replays] == ["InvalidTokenError"] * 2
    assert reuses
    for handle, answer in reuses:
        assert answer == _denied(
            f"handle {handle} was not issued on this connection", "icc:call:dictionary.lookup"
        )
    assert seen == [["lookup", "attacker"], ["lookup", "attacker"], ["lookup", "quiet"]]
    assert [e["reason"] for e in _decided(app, "refuse", "attacker")] == [
        f"token {old.token_id} or an ancestor is revoked" for old in olds
    ]
    assert [e["handle"] for e in _decided(app, "deny", "attacker")] == [h for h, _ in reuses]


# --- 22: attenuation -------------------------------------------------------------------------


@pytest.mark.trio
async def test_delegation_never_widens_combines_or_outlives_its_parent(
    capsule_app: TestApp,
) -> None:
    """THREATS 22: one parent capability must cover each derived one; expiry is capped."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            parent = _only_token(sup, "victim")
            attempts: list[str | list[str]] = [
                "icc:call:dictionary.*",  # wider than either call it holds
                ["icc:call:dictionary.lookup", "icc:call:dictionary.*"],  # one bad apple
                "icc:publish,subscribe:news.sports",  # two narrow grants made one
                "icc:publish:news.*",
                "icc:call:quiet.ping",  # held by nobody
            ]
            answers = [
                await sup.call(
                    "victim", "probe", {"op": "delegate", "caps": caps, "to": "attacker"}
                )
                for caps in attempts
            ]
            year = 300 * 24 * 3600.0
            kept = await sup.call(
                "victim",
                "probe",
                {"op": "delegate", "caps": "icc:call:dictionary.lookup", "to": "attacker",
                 "ttl": year},
            )  # fmt: skip
            assert kept["ok"], kept
            await _holds(sup, "attacker", kept["token_id"])
            held = {t.token_id: t for t in sup.feature("attacker").tokens()}
            use = await sup.call(
                "attacker", "probe", _request("dictionary", "lookup", kept["token_id"])
            )
            stretch = await sup.call(
                "attacker", "probe", _request("dictionary", "secret", kept["token_id"])
            )
            await _app_goes_on(sup)
            seen = await sup.call("dictionary", "seen")

    not_covered = f"not covered by any capability of token {parent.token_id}"
    assert answers == [
        _denied(not_covered, "icc:call:dictionary.*"),
        _denied(not_covered, "icc:call:dictionary.*"),
        _denied(not_covered, "icc:publish,subscribe:news.sports"),
        _denied(not_covered, "icc:publish:news.*"),
        _denied(not_covered, "icc:call:quiet.ping"),
    ]
    assert len(held) == 2  # its own token and the one delegation that was allowed
    child = held[kept["token_id"]]
    assert child.capabilities == ("icc:call:dictionary.lookup",)
    assert child.expires <= parent.expires
    assert use == {"ok": True, "value": "lookup"}
    assert stretch == _denied(
        f"no capability of token {kept['token_id']} covers it", "icc:call:dictionary.secret"
    )
    assert seen == [["lookup", "attacker"], ["lookup", "quiet"]]
    denials = [(e["event"], e["capability"], e["reason"]) for e in _decided(app, "deny", "victim")]
    assert denials == [("delegate", a["capability"], not_covered) for a in answers]
    delegated = _decided(app, "delegate", "victim")
    assert [(e["token"], e["to"]) for e in delegated] == [(kept["token_id"], "attacker")]


# --- 23: names and grants --------------------------------------------------------------------

_CALLS: list[tuple[str, str]] = [
    ("dictionary", "*"),
    ("*", "lookup"),
    ("dictionary", "lookup.*"),
    ("dictionary", "look*"),
    ("dicti\u043enary", "lookup"),  # Cyrillic o
    ("dictionary", "l\u043e\u043ekup"),
    ("dictionary", "\uff4cookup"),  # fullwidth l
    ("Dictionary", "lookup"),
    ("dictionary", "LOOKUP"),
    ("dictionary", "lookup."),
    ("dictionary.", "lookup"),
    ("dictionary", "lookup\x00"),
    ("dictionary\x00", "lookup"),
    ("dictionary", "lookup\x00secret"),
    ("dictionary", " lookup"),
]


@pytest.mark.trio
async def test_calls_outside_the_grant_or_with_lookalike_names_are_denied_and_not_delivered(
    capsule_app: TestApp,
) -> None:
    """THREATS 23: exact ASCII names, no wildcards in a call, deny by default."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            own = _only_token(sup, "attacker")
            delivered = sup.feature("dictionary").statistics().calls_total
            outside = await sup.call("attacker", "probe", _request("dictionary", "secret"))
            plain = await sup.call(
                "attacker", "probe", {"op": "call", "feature": "dictionary", "service": "secret"}
            )
            answers = [
                await sup.call("attacker", "probe", _request(feature, service))
                for feature, service in _CALLS
            ]
            assert sup.feature("dictionary").statistics().calls_total == delivered
            control = await sup.call("attacker", "probe", _request("dictionary", "lookup"))
            await _app_goes_on(sup)
            seen = await sup.call("dictionary", "seen")

    assert outside == _denied(
        f"no capability of token {own.token_id} covers it", "icc:call:dictionary.secret"
    )
    assert plain == _denied("no token it holds covers it", "icc:call:dictionary.secret")
    targets = [f"{feature}.{service}" for feature, service in _CALLS]
    assert answers == [
        _denied(f"{target!r} " + _NOT_VALID.format("call"), f"icc:call:{target}")
        for target in targets
    ]
    assert control == {"ok": True, "value": "lookup"}
    assert seen == [["lookup", "attacker"], ["lookup", "quiet"]]
    denials = [(e["event"], e["capability"]) for e in _decided(app, "deny", "attacker")]
    assert denials == [("call", f"icc:call:{t}") for t in ["dictionary.secret"] * 2 + targets]


_TOPICS: list[str] = [
    "spell.*",
    "*",
    "spell.checked.",
    "spell..checked",
    ".spell.checked",
    "SPELL.checked",
    "spell.Checked",
    "spell.ch\u0435cked",  # Cyrillic e
    "spell.checked\x00",
    "spell.checked\x00x",
    "spell.checked ",
    "dictionary\x00lookup",  # a call key the broker has seen is still no topic
]


@pytest.mark.trio
async def test_publishing_outside_the_grant_or_to_lookalike_topics_reaches_nobody(
    capsule_app: TestApp,
) -> None:
    """THREATS 23: a denied event reaches neither a feature nor the host."""
    app = _app(capsule_app)
    async with app.open() as sup, sup.subscribe("spell.*") as spell, sup.subscribe("editor.*"):
        with trio.fail_after(20):
            own = _only_token(sup, "attacker")
            # a call validated first: its cached name must not make a NUL topic valid
            assert (await sup.call("attacker", "probe", _request("dictionary", "lookup")))["ok"]
            outside = ["editor.changed", "spell"]
            topics = [*outside, *_TOPICS, "spell.marker"]
            assert await sup.call("attacker", "probe", {"op": "publish", "topics": topics}) == len(
                topics
            )
            assert (await spell.receive()).payload == "spell.marker"  # nothing came before it
            assert await sup.publish("editor.marker", "editor.marker") == 2

            async def victim_heard_both() -> bool:
                return len(await sup.call("victim", "heard")) >= 2

            await _eventually(victim_heard_both)
            heard = await sup.call("victim", "heard")
            await _app_goes_on(sup)

    assert heard == ["spell.marker", "editor.marker"]
    denials = [(e["capability"], e["reason"]) for e in _decided(app, "deny", "attacker")]
    not_covered = f"no capability of token {own.token_id} covers it"
    assert denials == [
        *[(f"icc:publish:{t}", not_covered) for t in outside],
        *[(f"icc:publish:{t}", f"{t!r} " + _NOT_VALID.format("publish")) for t in _TOPICS],
    ]


@pytest.mark.trio
async def test_subscribing_outside_the_grant_delivers_no_event(capsule_app: TestApp) -> None:
    """THREATS 23: a refused subscription is never added; host events do not reach it."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            own = _only_token(sup, "attacker")
            wider = ["spell.*", "editor.*", "spell.checked.*"]
            invalid = ["*", "spell.ch\u0435cked", "SPELL.checked", "spell.checked\x00", "spell.*.x"]
            answers = await sup.call(
                "attacker", "probe", {"op": "subscribe", "patterns": [*wider, *invalid]}
            )
            # the victim listens on spell.* and editor.*: the attacker must add nobody
            reached = {
                topic: await sup.publish(topic, topic)
                for topic in ("spell.other", "editor.changed", "spell.checked.x")
            }
            control = await sup.call(
                "attacker", "probe", {"op": "subscribe", "patterns": ["spell.checked"]}
            )
            reached["spell.checked"] = await sup.publish("spell.checked", "spell.checked")
            await _app_goes_on(sup)

    not_covered = f"no capability of token {own.token_id} covers it"
    assert answers == {
        **{p: _denied(not_covered, f"icc:subscribe:{p}") for p in wider},
        **{
            p: _denied(f"{p!r} " + _NOT_VALID.format("subscribe"), f"icc:subscribe:{p}")
            for p in invalid
        },
    }
    assert reached == {
        "spell.other": 1,  # the victim only
        "editor.changed": 1,
        "spell.checked.x": 1,
        "spell.checked": 2,  # the victim and the attacker's one granted subscription
    }
    assert control == {"spell.checked": {"ok": True}}
    denials = [(e["event"], e["capability"]) for e in _decided(app, "deny", "attacker")]
    assert denials == [("subscribe", f"icc:subscribe:{p}") for p in [*wider, *invalid]]


# --- 24: revocation --------------------------------------------------------------------------


@pytest.mark.trio
async def test_revocation_takes_effect_before_the_next_message(capsule_app: TestApp) -> None:
    """THREATS 24: the host revokes a root token: its calls, its subscriptions and every token
    delegated from it stop at once; a feature cannot revoke what it did not delegate."""
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            root = _only_token(sup, "victim")
            given = await sup.call(
                "victim",
                "probe",
                {"op": "delegate", "caps": "icc:call:dictionary.secret", "to": "attacker"},
            )
            child = given["token_id"]
            await _holds(sup, "attacker", child)
            before = [
                await sup.call("victim", "probe", _request("dictionary", "lookup")),
                await sup.call("attacker", "probe", _request("dictionary", "secret", child)),
            ]
            assert await sup.publish("spell.before", "before") == 1

            async def victim_heard_it() -> bool:
                return await sup.call("victim", "heard") == ["before"]

            await _eventually(victim_heard_it)
            revoked = await sup.revoke(root.token_id)
            after = [
                await sup.call("victim", "probe", _request("dictionary", "lookup")),
                await sup.call("attacker", "probe", _request("dictionary", "secret", child)),
            ]
            reached = await sup.publish("spell.after", "after")
            quiet_root = _only_token(sup, "quiet").token_id
            foreign = await sup.call("attacker", "probe", {"op": "revoke", "token_id": quiet_root})
            await _app_goes_on(sup)
            heard = await sup.call("victim", "heard")
            seen = await sup.call("dictionary", "seen")

    assert before == [{"ok": True, "value": "lookup"}, {"ok": True, "value": "secret"}]
    assert revoked == {root.token_id, child}
    assert after == [
        _denied(f"token {root.token_id} is revoked", "icc:call:dictionary.lookup"),
        _denied(f"token {child} is revoked", "icc:call:dictionary.secret"),
    ]
    assert reached == 0
    assert heard == ["before"]
    assert foreign == _denied(f"token {quiet_root} was not delegated by attacker", "revoke")
    assert seen == [["lookup", "victim"], ["secret", "attacker"], ["lookup", "quiet"]]
    revocations = [
        (e["token"], e["feature"])
        for e in _audit(app)
        if e["decision"] == "revoke" and e["token"] in revoked
    ]
    assert sorted(revocations) == sorted([(root.token_id, "victim"), (child, "attacker")])
    assert [e["reason"] for e in _decided(app, "deny", "victim")] == [
        f"token {root.token_id} is revoked"
    ]
    assert [(e["event"], e["reason"]) for e in _decided(app, "deny", "attacker")] == [
        ("call", f"token {child} is revoked"),
        ("revoke", f"token {quiet_root} was not delegated by attacker"),
    ]


# --- 25: frames, descriptors, floods ---------------------------------------------------------

_BREACHES: dict[str, str] = {
    "garbage": "undecodable frame",
    "not-utf8": "undecodable frame: ",  # the wording of the UTF-8 error is msgspec's
    "oversized": "frame of 2097152 bytes exceeds the 1048576-byte limit",
    "truncated": "closed the channel in the middle of a frame",
    "hello": "sent a second hello",
    "start": "undecodable frame",
    "deep": "maximum recursion depth exceeded",
    "fd": "sent ancillary data (1 file descriptor(s)); the channel carries bytes only",
}


def _fd_links() -> set[str]:
    links = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            links.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue  # closed while we looked
    return links


@pytest.mark.trio
@pytest.mark.parametrize("attack", sorted(_BREACHES))
async def test_a_frame_that_breaks_the_protocol_ends_only_that_container(
    capsule_app: TestApp, attack: str
) -> None:
    """THREATS 25: garbage, oversized, truncated, out-of-place, deeply nested frames and
    passed descriptors end the container (it restarts per its policy); the app goes on."""
    assert set(_BREACHES) == {*FRAMES, "fd"}
    app = _app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(30):
            pipe = await sup.call("attacker", "pipe") if attack == "fd" else None
            with pytest.raises(FeatureCrashedError):
                await sup.call("attacker", "raw", attack, timeout=10)
            await _app_goes_on(sup)
            await sup.feature("attacker").wait_ready(10)
            fresh = await sup.call("attacker", "probe", _lookup_call())
            restarts = sup.statistics().features["attacker"].restarts
            leaked = f"pipe:[{pipe}]" in _fd_links()

    assert fresh == {"ok": True, "value": "lookup"}
    assert restarts == 1
    assert not leaked  # a passed descriptor is closed, never kept
    [end] = _decided(app, "end", "attacker")
    assert end["reason"].startswith("broke the protocol: "), end
    assert _BREACHES[attack] in end["reason"], end
    if attack == "not-utf8":
        assert "utf-8" in end["reason"].lower(), end
    assert all(e["feature"] == "attacker" for e in _audit(app) if e["decision"] == "end")


def _flood_app(app: TestApp) -> TestApp:
    """flooder (publishes and calls sink as fast as it can), sink, and quiet (calls sink)."""
    sink = app.feature("sink")
    state: dict[str, Any] = {"stop": False, "hanging": 0, "cancelled": 0}

    @sink.service("echo")
    async def _echo(ctx: Context, request: Any) -> Any:
        return request

    @sink.service("hang")
    async def _hang(ctx: Context, request: Any) -> None:
        state["hanging"] += 1
        try:
            await trio.sleep_forever()
        finally:
            state["cancelled"] += 1

    @sink.service("state")
    async def _state(ctx: Context, request: Any) -> dict[str, Any]:
        return state

    flooder = app.feature(
        "flooder",
        requires=["sink"],
        policy={"call": ["sink.echo", "sink.hang"], "publish": ["flood.*"]},
    )

    @flooder.service("flood")
    async def _flood(ctx: Context, request: Any) -> int:
        handle = ctx.tokens[0].handle
        payload = msgspec.Raw(msgspec.msgpack.encode("x" * 64))
        sent = 0

        async def publisher() -> None:
            nonlocal sent
            while not state["stop"]:
                await ctx._client._send(
                    Publish(handle=handle, topic="flood.noise", payload=payload)
                )
                sent += 1
                if sent % 64 == 0:
                    await trio.lowlevel.checkpoint()

        async def caller() -> None:
            nonlocal sent
            while not state["stop"]:
                await ctx.call("sink", "echo", sent)
                sent += 1

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(publisher)
                nursery.start_soon(caller)
        return sent

    @flooder.service("stop")
    async def _stop(ctx: Context, request: Any) -> None:
        state["stop"] = True

    @flooder.service("overload")
    async def _overload(ctx: Context, calls: int) -> int:
        refused = 0
        enough = trio.Event()

        async def one() -> None:
            nonlocal refused
            try:
                await ctx.call("sink", "hang")
            except OverloadedError:
                refused += 1
                if refused == calls - MAX_IN_FLIGHT:
                    enough.set()

        async with trio.open_nursery() as nursery:
            for _ in range(calls):
                nursery.start_soon(one)
            await enough.wait()
            nursery.cancel_scope.cancel()  # the callee's handlers are cancelled too
        return refused

    quiet = app.feature("quiet", requires=["sink"], policy={"call": ["sink.echo"]})
    quiet.service("ping")(_ping)

    @quiet.service("relay")
    async def _relay(ctx: Context, request: Any) -> Any:
        return await ctx.call("sink", "echo", request)

    return app


@pytest.mark.trio
async def test_a_flooding_feature_does_not_starve_a_quiet_one(capsule_app: TestApp) -> None:
    """THREATS 25: fair scheduling: a quiet feature's calls complete during a flood."""
    app = _flood_app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(60):
            flooded: list[int] = []

            async def flood() -> None:
                flooded.append(await sup.call("flooder", "flood", timeout=60))

            def flooder_messages() -> int:
                return sup.statistics().features["flooder"].messages

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)

                async def flooding() -> bool:
                    return flooder_messages() > 10_000

                await _eventually(flooding)
                during = flooder_messages()
                for i in range(50):
                    assert await sup.call("quiet", "relay", i) == i
                    assert await sup.call("quiet", "ping") == "pong"
                    assert await sup.call("sink", "echo", -i) == -i
                assert flooder_messages() > during  # the flood went on all along
                await sup.call("flooder", "stop")
            assert await sup.call("quiet", "relay", "after") == "after"

    assert flooded
    assert flooded[0] > 10_000
    assert sup.statistics().features["quiet"].denied == 0


@pytest.mark.trio
async def test_more_requests_in_flight_than_the_quota_are_refused_as_overloaded(
    capsule_app: TestApp,
) -> None:
    """THREATS 25: per-connection quotas: past MAX_IN_FLIGHT a request is refused at once."""
    app = _flood_app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(30):
            over = 44
            refused = await sup.call("flooder", "overload", MAX_IN_FLIGHT + over)

            async def all_cancelled() -> bool:
                state = await sup.call("sink", "state")
                return bool(state["cancelled"] == state["hanging"] == MAX_IN_FLIGHT)

            await _eventually(all_cancelled)
            assert await sup.call("quiet", "relay", 1) == 1
            assert await sup.call("sink", "echo", 2) == 2

    assert refused == over
    overloaded = [
        e for e in _decided(app, "deny", "flooder") if e["reason"] == "too many calls in flight"
    ]
    assert len(overloaded) == over


# --- 26: nothing is unpickled ----------------------------------------------------------------


class _Trap:
    """Unpickling this makes a directory: proof, if it ever appears, that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.trio
async def test_payloads_are_data_never_unpickled_imported_or_rebuilt(
    capsule_app: TestApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """THREATS 26: a pickle is bytes, an ext type stays Ext, an error type is only a name."""
    unpickled: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        unpickled.append(args)
        raise AssertionError("the supervisor unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(cloudpickle, "loads", refuse)
    marker = capsule_app.root.parent / "unpickled"
    blob = pickle.dumps(_Trap(marker))
    ext = msgspec.msgpack.Ext(42, blob)

    app = capsule_app
    echo = app.feature("echo")

    @echo.service("echo")
    async def _echo(ctx: Context, request: Any) -> dict[str, Any]:
        return {"type": type(request).__name__, "value": request}

    sender = app.feature(
        "sender", requires=["echo"], policy={"call": ["echo.echo"], "publish": ["loot.*"]}
    )
    sender.service("probe")(probe)

    @sender.service("relay")
    async def _relay(ctx: Context, request: Any) -> Any:
        return await ctx.call("echo", "echo", request)

    @sender.service("ext")
    async def _ext(ctx: Context, request: bytes) -> Any:
        return msgspec.msgpack.Ext(42, request)

    @sender.service("publish")
    async def _publish(ctx: Context, request: bytes) -> None:
        await ctx.publish("loot.ext", msgspec.msgpack.Ext(42, request))

    @sender.service("impostor")
    async def _impostor(ctx: Context, request: Any) -> None:
        impostor = type("system", (Exception,), {"__module__": "os"})  # claims to be os.system
        raise impostor("rm -rf /")

    async with app.open() as sup, sup.subscribe("loot.*") as loot:
        with trio.fail_after(20):
            from_host = await sup.call("echo", "echo", blob)
            from_container = await sup.call("sender", "relay", blob)
            raw_ext = await sup.call(
                "sender",
                "probe",
                {"op": "request", "feature": "echo", "service": "echo",
                 "raw": msgspec.msgpack.encode(ext)},
            )  # fmt: skip
            returned_ext = await sup.call("sender", "ext", blob)
            not_utf8 = b"\xa3\x80nd"  # a msgpack string that is not UTF-8
            await sup.call(
                "sender", "probe", {"op": "publish", "topics": ["loot.bad"], "raw": not_utf8}
            )
            await sup.call("sender", "publish", blob)
            event = await loot.receive()  # the undecodable one was dropped, not delivered
            dropped = loot.dropped
            with pytest.raises(RemoteError) as raised:
                await sup.call("sender", "impostor")

    assert from_host == {"type": "bytes", "value": blob}
    assert from_container == {"type": "bytes", "value": blob}
    assert raw_ext == {"ok": True, "value": {"type": "Ext", "value": ext}}
    assert returned_ext == ext
    assert (event.topic, event.payload, event.sender) == ("loot.ext", ext, "sender")
    assert dropped == 1
    assert sup.statistics().features["sender"].restarts == 0  # not ended for it, either
    assert raised.value.remote_type == "os.system"
    assert "rm -rf /" in raised.value.remote_traceback
    assert unpickled == []
    assert not marker.exists()


# --- 27: handlers that never answer ----------------------------------------------------------


def _slow_app(app: TestApp) -> TestApp:
    slow = app.feature("slow")
    state: dict[str, list[str]] = {"started": [], "cancelled": []}

    @slow.service("hang")
    async def _hang(ctx: Context, who: str) -> None:
        state["started"].append(who)
        try:
            await trio.sleep_forever()
        finally:
            state["cancelled"].append(who)

    @slow.service("state")
    async def _state(ctx: Context, request: Any) -> dict[str, list[str]]:
        return state

    slow.service("ping")(_ping)
    caller = app.feature("caller", requires=["slow"], policy={"call": ["slow.hang"]})
    caller.service("probe")(probe)
    quiet = app.feature("quiet")
    quiet.service("ping")(_ping)
    return app


@pytest.mark.trio
async def test_a_handler_that_never_answers_times_out_is_cancelled_and_stalls_nobody(
    capsule_app: TestApp,
) -> None:
    """THREATS 27: the caller gets FeatureTimeoutError at its deadline, the handler is
    cancelled, and other calls (to other features and to the stalled one) go on meanwhile."""
    app = _slow_app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(30):

            async def cancelled(*who: str) -> None:
                async def done() -> bool:
                    return set(who) <= set((await sup.call("slow", "state"))["cancelled"])

                await _eventually(done)

            with pytest.raises(FeatureTimeoutError):
                await sup.call("slow", "hang", "host", timeout=0.5)
            from_container = await sup.call(
                "caller",
                "probe",
                {"op": "call", "feature": "slow", "service": "hang", "payload": "caller",
                 "timeout": 0.5},
            )  # fmt: skip
            await cancelled("host", "caller")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sup.call, "slow", "hang", "pending")

                async def pending() -> bool:
                    return "pending" in (await sup.call("slow", "state"))["started"]

                await _eventually(pending)
                for _ in range(20):
                    assert await sup.call("quiet", "ping") == "pong"
                    assert await sup.call("slow", "ping") == "pong"
                nursery.cancel_scope.cancel()  # the host gives up: the handler is cancelled
            await cancelled("pending")

            # a container stuck in a busy loop: its caller times out on time, the others go on
            async with trio.open_nursery() as nursery:

                async def stalled() -> None:
                    with pytest.raises(FeatureTimeoutError):
                        await sup.call("slow", "fault", {"kind": "spin", "seconds": 2}, timeout=0.5)

                nursery.start_soon(stalled)
                for _ in range(20):
                    assert await sup.call("quiet", "ping") == "pong"
            assert await sup.call("slow", "ping") == "pong"

    assert from_container["error"] == "FeatureTimeoutError"
    assert "did not answer within 0.5s" in from_container["reason"]


@pytest.mark.trio
async def test_a_cancel_that_overtakes_its_call_still_cancels_the_handler(
    capsule_app: TestApp,
) -> None:
    """THREATS 27 (regression): a Cancel read before its handler's task started was dropped,
    and the handler then ran forever; now the call's cancel scope exists from the moment the
    Call is read."""
    app = _slow_app(capsule_app)
    async with app.open() as sup:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(sup.call, "slow", "hang", f"call {i}")
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()  # the Cancels reach it before its handlers start

            async def all_cancelled() -> bool:
                state = await sup.call("slow", "state")
                return len(state["started"]) == 20 and sorted(state["cancelled"]) == sorted(
                    state["started"]
                )

            await _eventually(all_cancelled)
            assert sup.feature("slow").statistics().calls_in_flight == 0
            assert await sup.call("slow", "ping") == "pong"
