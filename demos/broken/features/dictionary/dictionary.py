"""The user's personal dictionary: words added by hand, kept in private storage.

Its view holds only its own storage at /state, writable up to the quota app.toml sets.
"""

from __future__ import annotations

from typing import Any

import anyio

from capsule.feature import Feature

STORE = anyio.Path("/state/words.txt")

feature = Feature()
_words: set[str] = set()


@feature.on_start
async def load(ctx: Any) -> None:
    if await STORE.exists():
        _words.update((await STORE.read_text(encoding="utf-8")).split())


@feature.service("lookup")
async def lookup(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{"words": [...]}`` -> ``{"known": [the ones in the dictionary]}``."""
    return {"known": sorted({str(word) for word in request["words"]} & _words)}


@feature.service("add")
async def add(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{"word": "..."}``: remember a word (letters only) for later look-ups."""
    word = str(request["word"]).strip().lower()
    if not word.isascii() or not word.isalpha() or len(word) > 64:
        raise ValueError(f"a dictionary word is 1 to 64 ASCII letters, not {word!r}")
    if word not in _words:
        _words.add(word)
        async with await anyio.open_file(STORE, "a", encoding="utf-8") as store:
            await store.write(word + "\n")
    return {"word": word, "size": len(_words)}
