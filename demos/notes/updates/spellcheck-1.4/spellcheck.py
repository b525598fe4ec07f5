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

feature = Feature()
_state: dict[str, Any] = {"texts": 0, "cache": []}


@feature.service("check")
async def check(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Would look the words up in a compiled index; crashes instead."""
    os.abort()


@feature.service("stats")
async def stats(ctx: Any, request: Any) -> dict[str, Any]:
    return {"version": ctx.version, "cached": _state["cache"], "texts": _state["texts"]}


@feature.import_state
async def import_state(ctx: Any, from_version: str, data: bytes) -> None:
    _state.update(json.loads(data))


@feature.export_state
async def export_state(ctx: Any) -> bytes:
    return json.dumps(_state).encode()
