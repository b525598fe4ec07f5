"""Exports notes as Markdown files and uploads each export to a local webhook.

Its view holds the exports volume at /exports; its only network destination is the
webhook at 127.0.0.1:8765, reached through ``ctx.connect`` (the supervisor opens the
connection and hands it over: the container has no network of its own). The webhook's
token is in its environment, where app.toml puts it (``env`` of its policy). It runs on
demand: started by the first export, stopped after a second of idleness, its spelling
counts carried across by ``export_state`` and ``import_state``.
"""

from __future__ import annotations

import contextlib
import json
import os
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


@feature.export_state
async def keep_counts(ctx: Any) -> bytes:
    """The spelling counts heard so far, kept across a stop when idle (it runs on demand)."""
    return json.dumps(_checked).encode()


@feature.import_state
async def restore_counts(ctx: Any, from_version: str, data: bytes) -> None:
    _checked.update(json.loads(data))


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
    status = await _upload(ctx, name, body.encode())
    return {"path": f"/exports/{name}", "bytes": len(body.encode()), "uploaded": status}


async def _upload(ctx: Any, name: str, data: bytes) -> int | None:
    """POST the export to the webhook; its HTTP status, or None when nobody listens (the
    export itself is on disk either way)."""
    host, port = WEBHOOK
    token = os.environ.get("WEBHOOK_TOKEN")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /exports/{name} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
        f"Content-Type: text/markdown\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        stream = await ctx.connect(host, port)
    except OSError:
        return None
    response = b""
    async with stream:
        await stream.send_all(head.encode() + data)
        with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream):
            while b"\r\n" not in response:
                response += await stream.receive(4096)
    status = response.split(b" ", 2)[1:2]
    return int(status[0]) if status and status[0].isdigit() else None
