"""Issue 20 item 4: nothing a feature does makes the audit log fill the disk.

A feature publishes to tens of thousands of topics its grant allows, each new, and floods
denials; the host judges the audit file: its size, one summary line for the flood with its
count, the feature's lines within its share of the file, and every decision that matters
(admission, delegation, revocation) still written.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from capsule.feature import Context
from capsule.testing import TestApp
from capsule.testing._broker_probes import probe

_TOPICS = 20_000


async def _ping(ctx: Context, request: Any) -> str:
    return "pong"


def _app(app: TestApp) -> TestApp:
    app.settings["audit_max"] = "5MiB"  # files of 1 MiB
    app.settings["audit_share"] = 0.05  # 52,428 bytes of each for one feature
    flooder = app.feature("flooder", policy={"publish": ["spell.*"], "call": ["quiet.ping"]})
    flooder.service("probe")(probe)
    quiet = app.feature("quiet", policy={"publish": ["news.quiet"]})
    quiet.service("ping")(_ping)
    return app


def _audit(app: TestApp) -> list[dict[str, Any]]:
    text = (app.root / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.trio
async def test_granted_publishes_to_ever_new_topics_cost_one_line_a_second(
    capsule_app: TestApp,
) -> None:
    app = _app(capsule_app)
    topics = [f"spell.t{i}" for i in range(_TOPICS)]
    async with app.open() as sup:
        with trio.fail_after(60):
            for start in range(0, _TOPICS, 5000):
                chunk = {"op": "publish", "topics": topics[start : start + 5000]}
                assert await sup.call("flooder", "probe", chunk) == 5000
            assert await sup.call("flooder", "probe", {"op": "call", "feature": "quiet",
                                                       "service": "ping"}) == {
                "ok": True, "value": "pong"}  # fmt: skip
            allowed = sup.statistics().allowed
    size = (app.root / "audit.jsonl").stat().st_size
    published = [
        e for e in _audit(app) if e["feature"] == "flooder" and e["event"] == "allow"
        and (e.get("action") == "publish" or e.get("capability", "").startswith("icc:publish"))
    ]  # fmt: skip
    assert sum(e["count"] for e in published) == _TOPICS
    assert allowed >= _TOPICS
    assert len(published) <= 60  # a line per flush it spanned, not one per topic
    assert all("suppressed" in e["reason"] for e in published if "action" in e)
    assert size < 64 << 10, size  # main wrote about 6 MB for this


@pytest.mark.trio
async def test_a_denial_flood_takes_only_its_share_and_decisions_that_matter_are_kept(
    capsule_app: TestApp,
) -> None:
    app = _app(capsule_app)
    outside = [f"editor.t{i}" for i in range(20_000)]  # none granted: every one a denial
    async with app.open() as sup:
        with trio.fail_after(60):
            for start in range(0, len(outside), 200):  # 200 a call: under the per-second cap
                chunk = {"op": "publish", "topics": outside[start : start + 200]}
                assert await sup.call("flooder", "probe", chunk) == 200
            token = sup.feature("flooder").tokens()[0].token_id
            revoked = await sup.revoke(token)
            denied = sup.statistics().features["flooder"].denied
    written = _audit(app)
    denials = [e for e in written if e["feature"] == "flooder" and e["decision"] == "deny"]
    size = sum(len(json.dumps(e)) + 1 for e in denials)
    assert size <= 52_428 + 2_000, size  # its share of the file, and a line or so over
    suppressed = [e for e in written if e["decision"] == "suppressed"]
    assert suppressed, "the flood past its share is summarised"
    accounted = sum(e.get("count", 1) for e in denials) + sum(e["count"] for e in suppressed)
    assert accounted == denied  # every denial written, or counted in a summary
    admits = [e for e in written if e["decision"] == "admit"]
    assert {e["feature"] for e in admits} == {"flooder", "quiet"}
    assert [e["token"] for e in written if e["decision"] == "revoke"][:1] == [token]
    assert token in revoked


@pytest.mark.trio
async def test_delegations_always_audited_are_refused_once_they_took_the_features_share(
    capsule_app: TestApp,
) -> None:
    """Delegating and revoking in a loop writes lines that are never dropped; past its share
    of the file, delegating is refused instead, and every delegation made is in the log."""
    app = _app(capsule_app)
    attempt = {"op": "delegate", "caps": "icc:call:quiet.ping", "to": "quiet"}
    made: list[str] = []
    refused: dict[str, Any] = {}
    async with app.open() as sup:
        with trio.fail_after(60):
            for _ in range(2000):
                given = await sup.call("flooder", "probe", attempt)
                if not given["ok"]:
                    refused = given
                    break
                made.append(given["token_id"])
                revoke = {"op": "revoke", "token_id": given["token_id"]}
                assert (await sup.call("flooder", "probe", revoke))["ok"]
    written = _audit(app)
    mine = [e for e in written if e["feature"] == "flooder"]
    assert 20 < len(made) < 2000
    assert refused["error"] == "OverloadedError"
    assert "took its share of the audit log" in refused["reason"]
    assert [e["token"] for e in written if e["decision"] == "delegate"] == made
    assert sum(len(json.dumps(e)) + 1 for e in mine) <= 52_428 + 4_000
    assert [e["limit"] for e in mine if e["event"] == "limit"] == ["audit_share"]
