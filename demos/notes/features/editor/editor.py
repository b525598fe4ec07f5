"""The notes editor: opens every note, announces it, spell-checks it and exports it.

Its view holds the notes volume at /notes, writable; everything else goes through
the capabilities app.toml approves for it.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import anyio

from capsule.errors import FeatureCrashedError, FeatureUnavailableError
from capsule.feature import Feature

NOTES = anyio.Path("/notes")

feature = Feature()


@feature.on_start
async def open_notes(ctx: Any) -> None:
    """The demo scenario: every note is announced, checked, then exported."""
    notes = sorted([note async for note in NOTES.glob("*.md")])
    for note in notes:
        text = await note.read_text(encoding="utf-8")
        await ctx.publish("editor.changed", {"note": note.name, "text": text})
        checked = await ctx.call("spellcheck", "check", {"text": text})
        await ctx.call(
            "exporter",
            "export",
            {"note": note.name, "text": text, "unknown": checked["unknown"]},
        )


@feature.service("save")
async def save(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Write a note (a plain file name ending in .md), announce the change and spell-check
    it. The note is saved whatever the spell checker does: when it fails, the answer says
    so (``"checked": false`` and why) instead of failing the save."""
    name = str(request["note"])
    if PurePosixPath(name).name != name or not name.endswith(".md"):
        raise ValueError(f"a note is a plain file name ending in .md, not {name!r}")
    text = str(request["text"])
    await (NOTES / name).write_text(text, encoding="utf-8")
    await ctx.publish("editor.changed", {"note": name, "text": text})
    saved: dict[str, Any] = {"note": name, "bytes": len(text.encode())}
    try:
        checked = await ctx.call("spellcheck", "check", {"text": text, "note": name})
    except (FeatureCrashedError, FeatureUnavailableError) as exc:
        return {**saved, "checked": False, "why": str(exc)}
    return {**saved, "checked": True, "unknown": checked["unknown"], "by": checked["version"]}
