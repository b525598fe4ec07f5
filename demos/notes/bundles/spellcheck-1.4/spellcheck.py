"""Spell checking, version 1.4.0: a release that is broken on purpose.

Its first check ends its process (``os.abort()``, standing in for a crash in native code,
such as a word index built for another platform). Updated to while the app runs, it fails
its probation: after its second crash the supervisor switches calls back to 1.3.0, which
it kept frozen meanwhile, and audits ``update-rollback``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from capsule.feature import Feature

VERSION = "1.4.0"

feature = Feature()
_cache: set[str] = set()


@feature.service("check")
async def check(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Would look the words up in a compiled index; crashes instead."""
    os.abort()


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    return {"version": VERSION, "cached": sorted(_cache), "checks": 0, "asked": 0}


@feature.import_state
async def import_cache(ctx: Any, from_version: str, data: bytes) -> None:
    _cache.update(str(word) for word in json.loads(data)["cache"])


@feature.export_state
async def export_cache(ctx: Any) -> bytes:
    return json.dumps({"cache": sorted(_cache)}).encode()
