"""Spell checking, version 1.3.0: as 1.2.0, and each unknown word comes with suggestions
from the word list.

Installed while the app runs (``capsule update spellcheck bundles/spellcheck-1.3``): it
takes over the running version's cache of the user's words (``import_state``), so it
does not ask the dictionary about them again, and hands it on in turn (``export_state``).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

import anyio

from capsule.feature import Feature

VERSION = "1.3.0"
WORD_LIST = anyio.Path("/data/words/words.txt")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

feature = Feature()
_known: set[str] = set()
_cache: set[str] = set()  # the user's words the dictionary confirmed (it only ever adds)
_figures = {"checks": 0, "asked": 0}
_imported: dict[str, Any] = {}


@feature.on_start
async def load_words(ctx: Any) -> None:
    _known.update((await WORD_LIST.read_text(encoding="utf-8")).split())


async def _check(ctx: Any, text: str, note: str | None) -> list[str]:
    _figures["checks"] += 1
    words = _WORD.findall(text.lower())
    candidates = sorted({word for word in words if word not in _known and word not in _cache})
    unknown: list[str] = []
    if candidates:
        _figures["asked"] += 1
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
    return {"unknown": unknown, "suggestions": suggestions, "version": VERSION}


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    """This version, its cache, checks made, questions asked of the dictionary, and what it
    imported from the version before it."""
    return {"version": VERSION, "cached": sorted(_cache), **_figures, "imported": _imported}


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    """Check every edited note as it changes, so subscribers hear about it early."""
    await _check(ctx, str(event["text"]), str(event["note"]))


@feature.import_state
async def import_cache(ctx: Any, from_version: str, data: bytes) -> None:
    """During a live update: the cache of the version this one replaces (1.2.0 and later
    export it alike)."""
    cache = json.loads(data)["cache"]
    _cache.update(str(word) for word in cache)
    _imported.update({"from": from_version, "words": len(cache)})


@feature.export_state
async def export_cache(ctx: Any) -> bytes:
    """During a live update: the cache, as JSON, for the next version."""
    return json.dumps({"cache": sorted(_cache)}).encode()
