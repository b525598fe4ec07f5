"""Spell checking: words from the read-only word list, the rest asked of the dictionary.

Its view holds the word list at /data/words, read-only. The dictionary's answers for the
user's own words are kept in a cache, in memory; a live update hands the cache to the
next version (``export_state``), so the new one does not ask the dictionary again.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio

from capsule.feature import Feature

VERSION = "1.2.0"
WORD_LIST = anyio.Path("/data/words/words.txt")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

feature = Feature()
_known: set[str] = set()
_cache: set[str] = set()  # the user's words the dictionary confirmed (it only ever adds)
_figures = {"checks": 0, "asked": 0}


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
    """``{"text": ...}`` -> ``{"unknown": [words not in the list or the dictionary]}``."""
    unknown = await _check(ctx, str(request["text"]), request.get("note"))
    return {"unknown": unknown, "version": VERSION}


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    """This version, its cache's size, checks made and questions asked of the dictionary."""
    return {"version": VERSION, "cached": sorted(_cache), **_figures}


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    """Check every edited note as it changes, so subscribers hear about it early."""
    await _check(ctx, str(event["text"]), str(event["note"]))


@feature.export_state
async def export_cache(ctx: Any) -> bytes:
    """During a live update: the cache, as JSON, for the next version."""
    return json.dumps({"cache": sorted(_cache)}).encode()
