"""Spell checking, version 1.3.0: what 1.2.0 does, and each unknown word comes with
suggestions from the word list.

Installed while the app runs (``capsule update spellcheck updates/spellcheck-1.3``), it
takes over the running version's count of texts checked and its cache of the user's
words (``import_state``), so it counts on and does not ask the dictionary about those
words again, and hands both on in turn (``export_state``). Its view holds the word list
at /data/words, read-only.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

import anyio

from capsule.feature import Feature

WORD_LIST = anyio.Path("/data/words/words.txt")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

feature = Feature()
_known: set[str] = set()
_cache: set[str] = set()  # the user's words the dictionary confirmed (it only ever adds)
_checked: dict[str, Any] = {"texts": 0, "asked": 0, "from": None}


@feature.on_start
async def load_words(ctx: Any) -> None:
    _known.update((await WORD_LIST.read_text(encoding="utf-8")).split())


@feature.import_state
async def import_state(ctx: Any, from_version: str, data: bytes) -> None:
    """Take over the count and the cache of the version this one replaces (1.2.0 and
    later send them as JSON)."""
    state = json.loads(data)
    _checked["texts"] = int(state["texts"])
    _cache.update(str(word) for word in state.get("cache", ()))
    _checked["from"] = from_version


@feature.export_state
async def export_state(ctx: Any) -> bytes:
    return json.dumps({"texts": _checked["texts"], "cache": sorted(_cache)}).encode()


async def _check(ctx: Any, text: str, note: str | None) -> list[str]:
    _checked["texts"] += 1
    words = _WORD.findall(text.lower())
    candidates = sorted({word for word in words if word not in _known and word not in _cache})
    unknown: list[str] = []
    if candidates:
        _checked["asked"] += 1
        reply = await ctx.call("dictionary", "lookup", {"words": candidates})
        personal = set(reply["known"])
        _cache.update(personal)
        unknown = [word for word in candidates if word not in personal]
    await ctx.publish("spell.checked", {"note": note, "words": len(words), "unknown": len(unknown)})
    return unknown


@feature.service("check")
async def check(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{"text": ...}`` -> ``{"unknown": [...], "suggestions": {word: [close words]}}``."""
    unknown = await _check(ctx, str(request["text"]), request.get("note"))
    suggestions = {word: difflib.get_close_matches(word, _known, n=3) for word in unknown}
    return {"unknown": unknown, "suggestions": suggestions, "version": ctx.version}


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    """How many texts this feature checked, over its versions, which it took over from,
    its cache and the look-ups it asked for."""
    return {"version": ctx.version, "cached": sorted(_cache), **_checked}


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    """Check every edited note as it changes, so subscribers hear about it early."""
    await _check(ctx, str(event["text"]), str(event["note"]))
