"""word-stats: counts the words of each note. Third-party code, run untrusted.

Its view holds only the public notes at /notes, read-only; it hears editor.changed
events and answers ``stats`` calls, and can do nothing else.
"""

from __future__ import annotations

from typing import Any

import anyio

from capsule.feature import Feature

NOTES = anyio.Path("/notes")

feature = Feature()
_counts: dict[str, int] = {}


@feature.on_start
async def scan(ctx: Any) -> None:
    async for note in NOTES.glob("*.md"):
        _counts[note.name] = len((await note.read_text(encoding="utf-8")).split())


@feature.on("editor.changed")
async def on_changed(ctx: Any, event: dict[str, Any]) -> None:
    _counts[str(event["note"])] = len(str(event["text"]).split())


@feature.service("stats")
async def stats(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{}`` -> ``{"notes": N, "words": N, "longest": name or None}``."""
    longest = max(_counts, key=_counts.__getitem__, default=None)
    return {"notes": len(_counts), "words": sum(_counts.values()), "longest": longest}
