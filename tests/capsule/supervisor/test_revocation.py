"""Revocation is immediate: once ``await sup.revoke()`` returns, no operation through the
mounts of the revoked token succeeds, not even one the kernel could answer from its caches
(pages of open files, attributes, names, an open listing), with tens of thousands of files
known to the mount. Real containers, a real view, counted from inside the container.

The container and the host share CLOCK_MONOTONIC (containers get no time namespace, and the
first test checks it), so the container's operations are compared with the instant
``revoke()`` returned on the host.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from capsule import Supervisor, ViewTimeouts
from capsule._container._feature import Context
from capsule.testing import TestApp, leftovers
from capsule.testing._probes import raw_syscall
from tests.capsule.supervisor.helpers import wait_until

#: files in the volume, all listed (so known to the kernel and the server) before revoking
_DIRS: Final = 30
_PER_DIR: Final = 1000
#: getdents64 by machine: read a directory opened before, with nothing else first
_GETDENTS64: Final = {"x86_64": 217, "aarch64": 61}
#: how long the threads hammer before and after the revocation
_HAMMER: Final = 0.5
_LIMITS: Final = {"memory": "192MiB", "pids": 32, "cpu": 1.0, "tmp": "1MiB"}

# -- run inside the container --------------------------------------------------------------

_state: dict[str, Any] = {}


async def clock(ctx: Context, request: Any) -> Any:
    return time.monotonic()


def _operations() -> dict[str, Callable[[], object]]:
    """One operation per kind of cache a revoked mount could still be served from."""
    held = os.open("/vol/d0/f0000", os.O_RDONLY)
    written = os.open("/vol/d0/f0001", os.O_RDWR)
    listing = os.open("/vol/d1", os.O_RDONLY | os.O_DIRECTORY)
    entries = os.open("/vol/d2", os.O_RDONLY | os.O_DIRECTORY)
    buffer = ctypes.create_string_buffer(1 << 16)

    def getdents() -> int:  # a directory read with no fstat first (as os.listdir does)
        os.lseek(entries, 0, os.SEEK_SET)
        got, err = raw_syscall(
            _GETDENTS64[os.uname().machine], entries, ctypes.addressof(buffer), len(buffer)
        )
        if err:
            raise OSError(err, os.strerror(err))
        return got

    names = [f"/vol/d{d}/f{f:04d}" for d in range(2, _DIRS) for f in range(0, _PER_DIR, 50)]
    _state["mapped"] = mmap.mmap(held, 4096, prot=mmap.PROT_READ)
    _state["fds"] = [held, written, listing, entries]
    turn = iter(range(1 << 62))
    return {
        "read": lambda: os.pread(held, 4096, 0),  # the page cache
        "fstat": lambda: os.fstat(held),  # the attribute cache
        "stat": lambda: os.stat(names[next(turn) % len(names)]),  # names and attributes
        "open": lambda: os.close(os.open(names[next(turn) % len(names)], os.O_RDONLY)),
        "write": lambda: os.pwrite(written, b"y", 0),
        "list": lambda: os.listdir("/vol/d0"),
        "list_open": lambda: os.listdir(listing),  # a directory opened before
        "getdents": getdents,  # the same, without the fstat fdopendir makes first
    }


def _hammer(operation: Callable[[], object], stop: threading.Event, log: dict[str, Any]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            operation()
        except OSError as exc:
            log["failed"].append(started)
            log["errno"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        else:
            log["ok"].append(started)


async def start(ctx: Context, request: Any) -> Any:
    """List every directory (the kernel learns every file), fill the page cache of the held
    file, map it, and start one thread hammering each kind of operation."""
    known = sum(len(os.listdir(f"/vol/d{d}")) for d in range(_DIRS))
    operations = _operations()
    for operation in operations.values():
        operation()
    assert _state["mapped"][:4] == b"xxxx"
    stop = threading.Event()
    logs = {name: {"ok": [], "failed": [], "errno": None} for name in operations}
    threads = [
        threading.Thread(target=_hammer, args=(operation, stop, logs[name]), daemon=True)
        for name, operation in operations.items()
    ]
    for thread in threads:
        thread.start()
    _state.update(stop=stop, logs=logs, threads=threads)
    return known


async def stop(ctx: Context, request: Any) -> Any:
    """Stop hammering; per kind of operation, what happened before and after ``request``
    (the instant revoke() returned); and whether the mapped page still reads (in a child)."""
    _state["stop"].set()
    for thread in _state["threads"]:
        thread.join()
    seen = {}
    for name, log in _state["logs"].items():
        seen[name] = {
            "ok_before": sum(1 for t in log["ok"] if t < request),
            "ok_after": sum(1 for t in log["ok"] if t >= request),
            "failed_after": sum(1 for t in log["failed"] if t >= request),
            "errno": log["errno"],
        }
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only touches the page, then ends
        _state["mapped"][0]
        os._exit(0)
    _, status = os.waitpid(child, 0)  # noqa: ASYNC222 - it touches one page and ends
    seen["mmap"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    for fd in _state["fds"]:
        os.close(fd)
    return seen


async def read_one(ctx: Context, request: Any) -> Any:
    with open("/vol/d0/f0000", "rb") as f:  # noqa: ASYNC230 - a feature reads plainly
        return len(f.read())


# -- the host ------------------------------------------------------------------------------


def _app(tmp_path: Path, per_dir: int = _PER_DIR, restart: str = "on-failure") -> TestApp:
    app = TestApp(tmp_path)
    volume = app.volume("big")
    for d in range(_DIRS):
        directory = volume / f"d{d}"
        directory.mkdir()
        for f in range(per_dir):
            (directory / f"f{f:04d}").write_bytes(b"x" * 4096)
    feature = app.feature(
        "hammered",
        limits=_LIMITS,
        restart={"policy": restart},
        policy={"fs": [{"path": "/vol", "volume": "big", "mode": "rw"}]},
    )
    for handler in (clock, start, stop, read_one):
        feature.service(handler.__name__)(handler)
    return app


def _fs_token(sup: Supervisor, feature: str) -> str:
    held = [
        t for t in sup.feature(feature).tokens() if any(c.startswith("fs:") for c in t.capabilities)
    ]
    assert len(held) == 1, held
    return held[0].token_id


@pytest.mark.trio
async def test_nothing_succeeds_through_a_revoked_mount_once_revoke_returns(
    tmp_path: Path,
) -> None:
    """Eight threads in the container read an open file (page cache), fstat it, stat and
    open known names, write an open file, list a directory and re-read two opened before,
    over a volume of 30,000 listed files; ``await sup.revoke()``; not one of the operations
    started after it returned succeeds, while each succeeded before and was tried after.
    The mapped page of the open file is gone too (SIGBUS)."""
    app = _app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(120):
            before = time.monotonic()
            inside = await sup.call("hammered", "clock")
            assert before <= inside <= time.monotonic(), "the container has its own clock"
            assert await sup.call("hammered", "start") == _DIRS * _PER_DIR
            await trio.sleep(_HAMMER)
            token = _fs_token(sup, "hammered")
            assert token in await sup.revoke(token)
            revoked = time.monotonic()
            await trio.sleep(_HAMMER)
            seen = await sup.call("hammered", "stop", revoked)
    assert seen.pop("mmap") == signal.SIGBUS
    succeeded = {name: kind["ok_after"] for name, kind in seen.items() if kind["ok_after"]}
    assert succeeded == {}, seen
    for name, kind in seen.items():
        assert kind["ok_before"] > 0, (name, seen)
        assert kind["failed_after"] > 0, (name, seen)
        assert kind["errno"] == "EACCES", (name, seen)
    assert leftovers() == []


@pytest.mark.trio
async def test_a_revocation_the_view_cannot_confirm_ends_the_container_first(
    tmp_path: Path,
) -> None:
    """A file-system server that does not confirm a revocation (stopped) within
    ``view_timeouts.revoke`` is aborted and killed, and its container ended, before
    ``revoke()`` returns; the ending is audited with the reason."""
    app = _app(tmp_path, per_dir=2, restart="never")
    timeouts = ViewTimeouts(probe_interval=60.0, probe=60.0, revoke=0.5)
    async with app.open(view_timeouts=timeouts) as sup:
        with trio.fail_after(30):
            assert await sup.call("hammered", "read_one") == 4096
            instance = sup.feature("hammered").instance
            assert instance is not None
            assert instance.view is not None
            os.kill(instance.view.pid, signal.SIGSTOP)
            token = _fs_token(sup, "hammered")
            started = time.monotonic()
            assert token in await sup.revoke(token)
            assert time.monotonic() - started >= timeouts.revoke
            assert instance.ended.is_set()
            assert instance.view.exited.is_set()
    ends = [e for e in _audit(app) if e["event"] == "end" and e["feature"] == "hammered"]
    assert any("did not confirm revoking" in e["reason"] for e in ends), ends
    # the killed container's last process may still be tearing down its memory
    await wait_until(lambda: leftovers() == [], "nothing of the killed container is left")


def _audit(app: TestApp) -> list[dict[str, Any]]:
    text = (app.root / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]
