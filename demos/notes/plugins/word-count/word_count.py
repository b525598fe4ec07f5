"""word-count: how many words the public notes hold. A plugin, installed while the app runs.

Its view holds only the public notes at /notes, read-only: that is all [plugins] in
app.toml lets a plugin have.
"""

from __future__ import annotations

from typing import Any

import anyio

from capsule.feature import Feature

feature = Feature()


@feature.service("count")
async def count(ctx: Any, request: Any) -> dict[str, int]:
    notes = words = 0
    async for note in anyio.Path("/notes").glob("*.md"):
        notes += 1
        words += len((await note.read_text(encoding="utf-8")).split())
    return {"notes": notes, "words": words}
