"""word-stats: counts the words of each note. Third-party code, run untrusted.

Its view holds only the public notes at /notes, read-only; it hears editor.changed
events and answers ``stats`` calls, and can do nothing else. Its ``rewrite`` service
shows what happens when it tries anyway.
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


@feature.service("rewrite")
async def rewrite(ctx: Any, request: dict[str, Any]) -> str:
    """What a rogue plugin tries: overwrite a note it was only allowed to read. Returns
    ``ok`` or the errno name of the refusal."""
    import errno  # noqa: PLC0415 - kept beside the one handler that needs it

    try:
        await (NOTES / str(request["note"])).write_text("rewritten by the plugin\n")
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


@feature.service("stats")
async def stats(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{}`` -> ``{"notes": N, "words": N, "longest": name or None}``."""
    longest = max(_counts, key=_counts.__getitem__, default=None)
    return {"notes": len(_counts), "words": sum(_counts.values()), "longest": longest}
