"""Spell checking: words from the read-only word list, the rest asked of the dictionary.

Its view holds the word list at /data/words, read-only. It counts the texts it checked,
and hands the count to its next version in a live update (``capsule update``).
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
_checked = {"texts": 0}


@feature.on_start
async def load_words(ctx: Any) -> None:
    _known.update((await WORD_LIST.read_text(encoding="utf-8")).split())


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


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    """Check every edited note as it changes, so subscribers hear about it early."""
    await _check(ctx, str(event["text"]), str(event["note"]))


@feature.export_state
async def export_state(ctx: Any) -> bytes:
    """What a new version takes over: the count of texts checked, as JSON."""
    return json.dumps(_checked).encode()
