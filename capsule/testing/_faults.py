"""Faults a test injects into its own container on purpose, through the ``fault`` service.

Runs inside the container. Each kind misbehaves the way a buggy or hostile feature
would; none of them is ever installed outside capsule.testing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any, Final

import anyio

from capsule._container._feature import Context, Feature

__all__ = ["FAULTS", "install_faults"]

FAULTS: Final = (
    "raise",
    "exit",
    "segfault",
    "hang",
    "stubborn",
    "forkbomb",
    "threadbomb",
    "balloon",
    "spin",
)
_CHUNK: Final = 8 << 20


class _State:
    stubborn = False
    hoard: list[bytes] = []  # noqa: RUF012 - process-wide on purpose: memory must stay referenced


def _forkbomb(limit: int) -> dict[str, Any]:
    children = 0
    while children < limit:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"forked": children, "errno": exc.errno}
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        children += 1
    return {"forked": children, "errno": None}


def _threadbomb(limit: int) -> dict[str, Any]:
    started = 0
    stop = threading.Event()
    try:
        while started < limit:
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError as exc:
        return {"threads": started, "error": str(exc)}
    return {"threads": started, "error": None}


def _balloon(limit: int) -> dict[str, Any]:
    while len(_State.hoard) * _CHUNK < limit:
        _State.hoard.append(b"x" * _CHUNK)  # touched, so it is really resident
    return {"held": len(_State.hoard) * _CHUNK}


def _spin(seconds: float) -> dict[str, Any]:
    end = time.monotonic() + seconds
    loops = 0
    while time.monotonic() < end:
        loops += 1
    return {"loops": loops}


async def _fault(ctx: Context, request: Any) -> Any:
    """``{"kind": one of FAULTS, ...}``: misbehave as asked."""
    kind = request["kind"] if isinstance(request, dict) else request
    if kind == "raise":
        raise RuntimeError(request.get("message", "injected fault"))
    if kind == "exit":
        os._exit(int(request.get("code", 3)))
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "hang":
        await anyio.sleep_forever()
    if kind == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _State.stubborn = True
        return {"stubborn": True}
    if kind == "forkbomb":
        return _forkbomb(int(request.get("limit", 10_000)))
    if kind == "threadbomb":
        return _threadbomb(int(request.get("limit", 10_000)))
    if kind == "balloon":
        return _balloon(int(request.get("bytes", 1 << 40)))
    if kind == "spin":
        return _spin(float(request.get("seconds", 1.0)))
    raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")


async def _on_stop(ctx: Context) -> None:
    if _State.stubborn:
        await anyio.sleep_forever()


def install_faults(feature: Feature) -> None:
    """Add the ``fault`` service and the stop hook the ``stubborn`` fault needs."""
    feature.service("fault")(_fault)
    feature.on_stop(_on_stop)
