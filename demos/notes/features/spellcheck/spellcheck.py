"""Spell checking: words from the read-only word list, the rest asked of the dictionary.

Its view holds the word list at /data/words, read-only. The dictionary's answers for the
user's own words are kept in a cache, in memory, and it counts the texts it checked; a
live update (``capsule update``) hands both to the next version (``export_state``), so
the new one counts on and does not ask the dictionary about those words again.
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
_cache: set[str] = set()  # the user's words the dictionary confirmed (it only ever adds)
_checked = {"texts": 0, "asked": 0}  # texts checked; look-ups asked of the dictionary


@feature.on_start
async def load_words(ctx: Any) -> None:
    _known.update((await WORD_LIST.read_text(encoding="utf-8")).split())


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
    """``{"text": ...}`` -> ``{"unknown": [words not in the list or the dictionary]}``."""
    unknown = await _check(ctx, str(request["text"]), request.get("note"))
    return {"unknown": unknown, "version": ctx.version}


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    """This version, the texts it checked, its cache and the look-ups it asked for."""
    return {"version": ctx.version, "cached": sorted(_cache), **_checked}


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    """Check every edited note as it changes, so subscribers hear about it early."""
    await _check(ctx, str(event["text"]), str(event["note"]))


@feature.export_state
async def export_state(ctx: Any) -> bytes:
    """What a new version takes over: the count of texts checked and the cache, as JSON."""
    return json.dumps({"texts": _checked["texts"], "cache": sorted(_cache)}).encode()
