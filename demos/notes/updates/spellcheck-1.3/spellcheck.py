"""Spell checking, version 1.3.0: what 1.2.0 does, and a ``stats`` service saying how many
texts it checked, counting those of the version it replaced (``capsule update``).

Its view holds the word list at /data/words, read-only.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio

from capsule.feature import Feature

WORD_LIST = anyio.Path("/data/words/words.txt")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

feature = Feature()
_known: set[str] = set()
_checked: dict[str, Any] = {"texts": 0, "from": None}


@feature.on_start
async def load_words(ctx: Any) -> None:
    _known.update((await WORD_LIST.read_text(encoding="utf-8")).split())


@feature.import_state
async def import_state(ctx: Any, from_version: str, data: bytes) -> None:
    """Take over the count of the version this one replaces (1.2.0 sends JSON)."""
    _checked["texts"] = int(json.loads(data)["texts"])
    _checked["from"] = from_version


@feature.export_state
async def export_state(ctx: Any) -> bytes:
    return json.dumps({"texts": _checked["texts"]}).encode()


async def _check(ctx: Any, text: str, note: str | None) -> list[str]:
    _checked["texts"] += 1
    words = _WORD.findall(text.lower())
    candidates = sorted({word for word in words if word not in _known})
    unknown: list[str] = []
    if candidates:
        reply = await ctx.call("dictionary", "lookup", {"words": candidates})
        personal = set(reply["known"])
        unknown = [word for word in candidates if word not in personal]
    await ctx.publish("spell.checked", {"note": note, "words": len(words), "unknown": len(unknown)})
    return unknown


@feature.service("check")
async def check(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{"text": ...}`` -> ``{"unknown": [words not in the list or the dictionary]}``."""
    return {"unknown": await _check(ctx, str(request["text"]), request.get("note"))}


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    """How many texts this feature checked, over its versions, and which it took over from."""
    return {"version": ctx.version, "texts": _checked["texts"], "from": _checked["from"]}


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    """Check every edited note as it changes, so subscribers hear about it early."""
    await _check(ctx, str(event["text"]), str(event["note"]))
