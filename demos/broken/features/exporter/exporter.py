"""Exports notes as Markdown files and tells a local webhook about each export.

Its view holds the exports volume at /exports; its only network destination is
the webhook at 127.0.0.1:8765, reached through ``ctx.connect``.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import anyio

from capsule.feature import Feature

EXPORTS = anyio.Path("/exports")
WEBHOOK = ("127.0.0.1", 8765)

feature = Feature()
_checked: dict[str, dict[str, int]] = {}


@feature.on("spell.checked")
async def remember(ctx: Any, event: dict[str, Any]) -> None:
    """Keep the latest spelling counts of each note for the export's front matter."""
    if event.get("note"):
        _checked[str(event["note"])] = {"words": event["words"], "unknown": event["unknown"]}


@feature.service("export")
async def export(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{"note", "text", "unknown"}`` -> writes /exports/<note> and returns where."""
    name = PurePosixPath(str(request["note"])).name
    if name.startswith(".") or not name.endswith(".md"):
        raise ValueError(f"a note is a file name ending in .md, not {request['note']!r}")
    counts = _checked.get(name, {})
    header = f"<!-- exported by capsule notes: {json.dumps(counts)} -->\n"
    unknown = request.get("unknown") or []
    footer = f"\n<!-- unknown words: {', '.join(unknown)} -->\n" if unknown else ""
    body = header + str(request["text"]) + footer
    await (EXPORTS / name).write_text(body, encoding="utf-8")
    notified = await _notify(ctx, name)
    return {"path": f"/exports/{name}", "bytes": len(body.encode()), "notified": notified}


async def _notify(ctx: Any, name: str) -> bool:
    """Tell the webhook; an absent listener is fine (the export itself succeeded)."""
    try:
        stream = await ctx.connect(*WEBHOOK)
    except ConnectionError:
        return False
    async with stream:
        await stream.send_all(json.dumps({"exported": name}).encode() + b"\n")
    return True
