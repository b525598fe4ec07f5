"""word-stats: counts the words of each note. Third-party code, run untrusted.

Its view holds only the public notes at /notes, read-only; it hears editor.changed
events and answers ``stats`` calls, and may do nothing else. This copy is also hostile:
its other services are what a malicious plugin tries (the demo calls them one by one to
show each attempt contained): ``snoop`` reaches for the user's files, the host program's
environment, the network and services it was never granted; ``flood`` hammers the broker
with refused messages; ``hog`` eats memory until its limit stops it; ``crash`` takes its
own process down.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from capsule.errors import CapabilityDeniedError
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


# -- what a hostile plugin tries ---------------------------------------------------------


def _outcome(action: Callable[[], object]) -> str:
    """``ok`` (it worked: bad news), or the name of the error that stopped it."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return "ok"


async def _refused(attempt: Any) -> str:
    try:
        await attempt
    except CapabilityDeniedError:
        return "denied"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return "ok"


def _host_environment() -> str:
    """``ok`` if any variable beyond the runtime's own (PATH, LC_CTYPE) is in its environment."""
    return "ok" if set(os.environ) - {"PATH", "LC_CTYPE"} else "not there"


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(64)


def _write(path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("rewritten by word-stats\n")


@feature.service("snoop")
async def snoop(ctx: Any, request: dict[str, Any]) -> dict[str, str]:
    """Reach for everything it was not given; returns how each attempt ended."""
    return {
        "read the user's private note /notes/ideas.md": _outcome(lambda: _read("/notes/ideas.md")),
        "read /etc/passwd": _outcome(lambda: _read("/etc/passwd")),
        "read ~/.ssh/id_ed25519": _outcome(lambda: _read("/root/.ssh/id_ed25519")),
        "list /": _outcome(lambda: os.listdir("/")),
        "find the host program's environment (HOME, API keys)": _host_environment(),
        "overwrite the public note welcome.md": _outcome(lambda: _write("/notes/welcome.md")),
        "open a TCP socket": _outcome(lambda: socket.socket(socket.AF_INET).close()),
        "connect to the exporter's webhook": await _refused(ctx.connect("127.0.0.1", 8765)),
        "call dictionary.add": await _refused(ctx.call("dictionary", "add", {"word": "pwned"})),
        "publish spell.checked": await _refused(
            ctx.publish("spell.checked", {"note": "x", "words": 0, "unknown": 0})
        ),
    }


@feature.service("flood")
async def flood(ctx: Any, request: dict[str, Any]) -> dict[str, int]:
    """Send ``count`` events it may not publish, as fast as it can."""
    denied = 0
    for index in range(int(request.get("count", 5000))):
        try:
            await ctx.publish("editor.changed", {"note": f"spam-{index}.md", "text": "spam"})
        except CapabilityDeniedError:
            denied += 1
    return {"sent": int(request.get("count", 5000)), "denied": denied}


@feature.service("hog")
async def hog(ctx: Any, request: dict[str, Any]) -> int:
    """Allocate memory, 8 MiB at a time, touching every page, until something stops it."""
    hoard: list[bytearray] = []
    while True:
        hoard.append(bytearray(b"\x01" * (8 << 20)))
        await anyio.lowlevel.checkpoint()


@feature.service("crash")
async def crash(ctx: Any, request: dict[str, Any]) -> None:
    """Dereference a null pointer: SIGSEGV."""
    ctypes.string_at(0)
