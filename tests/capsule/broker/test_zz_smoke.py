from __future__ import annotations
from typing import Any
import trio
import pytest
import capsule
from capsule.testing import TestApp


@pytest.mark.trio
async def test_smoke(tmp_path):
    app = TestApp(tmp_path)
    dic = app.feature("dictionary")
    spell = app.feature(
        "spellcheck",
        requires=["dictionary"],
        policy={"call": ["dictionary.lookup"], "publish": ["spell.*"]},
    )
    ed = app.feature(
        "editor",
        requires=["spellcheck"],
        policy={"call": ["spellcheck.check"], "subscribe": ["spell.*"]},
    )

    @dic.service("lookup")
    async def lookup(ctx, req):
        return {"known": req["words"][:1], "caller": ctx.caller}

    @dic.service("add")
    async def add(ctx, req):
        return "added"

    @dic.service("count")
    async def count(ctx, req):
        for i in range(req["n"]):
            yield i

    @spell.service("check")
    async def check(ctx, req):
        r = await ctx.call("dictionary", "lookup", {"words": req["text"].split()})
        await ctx.publish("spell.checked", {"n": len(r["known"])})
        try:
            await ctx.call("dictionary", "add", {})
        except capsule.CapabilityDeniedError as exc:
            r["denied"] = str(exc)
        return r

    @spell.service("give")
    async def give(ctx, req):
        return await ctx.delegate("icc:call:dictionary.lookup", to="editor", ttl=30)

    seen = []

    @ed.on("spell.*")
    async def heard(ctx, event):
        seen.append(event)

    @ed.service("seen")
    async def seen_(ctx, req):
        return seen

    @ed.service("direct")
    async def direct(ctx, req):
        return await ctx.call("dictionary", "lookup", {"words": ["x"]})

    async with app.open() as sup:
        with trio.fail_after(20):
            r = await sup.call("spellcheck", "check", {"text": "helo wrld"})
            print(r)
            assert r["caller"] == "spellcheck"
            assert "lacks capability icc:call:dictionary.add" in r["denied"]
            async with sup.subscribe("spell.*") as events:
                await sup.call("spellcheck", "check", {"text": "a"})
                ev = await events.receive()
                print(ev)
            print(await sup.call("editor", "seen"))
            with pytest.raises(capsule.RemoteError):
                await sup.call("editor", "direct")
            tid = await sup.call("spellcheck", "give")
            await trio.sleep(0.2)
            print(await sup.call("editor", "direct"))
            sup.revoke(tid)
            with pytest.raises(capsule.RemoteError) as e:
                await sup.call("editor", "direct")
            print(e.value)
            async with sup.stream("dictionary", "count", {"n": 40}, window=4) as items:
                got = [i async for i in items]
            assert got == list(range(40))
            print(sup.statistics())
    print((tmp_path / "audit.jsonl").read_text()[:4000])
