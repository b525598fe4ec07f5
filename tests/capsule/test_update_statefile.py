"""The state of a live update travels in a sealed memory file, in real containers: what a
version can and cannot do to the file its state goes through."""

from __future__ import annotations

import errno
import json
import mmap
import os
from pathlib import Path
from typing import Any

import pytest

import capsule.testing
from capsule import UpdateError
from capsule._container._feature import Context
from capsule.testing import TestApp
from capsule.testing._probes import exec_outcome, tiny_elf
from tests.capsule.supervisor.helpers import LIMITS, restart
from tests.capsule.update_helpers import QUICK, audit_events, count, counter, counter_version


def _state_file_fds() -> list[int]:
    """This process's descriptors of a state file (a feature looking for its own)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:capsule-state"):
            found.append(int(name))
    return found


@pytest.mark.trio
async def test_an_old_version_mapping_its_state_file_writable_fails_the_update(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path / "app")
    old = app.feature("counter", limits=LIMITS, restart=restart(), policy={"update": QUICK})
    counter(old, "1.0.0", handoff=False)
    maps: list[Any] = []

    @old.export_state
    async def _export(ctx: Context) -> bytes:
        for fd in _state_file_fds():  # writes through the mapping would bypass the seal
            os.ftruncate(fd, mmap.PAGESIZE)
            maps.append(mmap.mmap(fd, mmap.PAGESIZE))
        if not maps:
            raise RuntimeError("no state file among the descriptors while export_state runs")
        return b"{}"

    v2 = counter_version(app, "2.0.0")
    async with app.open() as sup:
        await sup.call("counter", "add")
        pid = sup.feature("counter").statistics().pid
        with pytest.raises(UpdateError, match="a writable mapping of it is still held"):
            await sup.update("counter", app.bundle(v2))
        assert await count(sup) == {"count": 1, "version": "1.0.0"}
        assert sup.feature("counter").statistics().pid == pid
    failed = audit_events(app.root / "audit.jsonl", "update-failed")
    assert len(failed) == 1
    assert "writable mapping" in failed[0]["reason"]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_new_version_reads_exactly_the_export_and_holds_no_state_file(
    tmp_path: Path,
) -> None:
    app = TestApp(tmp_path / "app")
    old = app.feature("store", limits=LIMITS, restart=restart(), policy={"update": QUICK})
    size = 256 * 4099  # not a whole number of pages; made in the containers (code ships small)

    @old.service("size")
    async def _size(ctx: Context, request: Any) -> int:
        return size

    @old.export_state
    async def _export(ctx: Context) -> memoryview:
        return memoryview(bytes(range(256)) * (size // 256))  # a buffer, not bytes

    new = app.version("store", "2.0.0")
    seen: dict[str, Any] = {}

    @new.import_state
    async def _import(ctx: Context, from_version: str, data: bytes) -> None:
        seen.update(data=data, kind=type(data).__name__, files=_state_file_fds())

    @new.service("seen")
    async def _seen(ctx: Context, request: Any) -> list[Any]:
        expected = bytes(range(256)) * (size // 256)
        return [seen["data"] == expected, seen["kind"], seen["files"], _state_file_fds()]

    async with app.open() as sup:
        assert await sup.call("store", "size") == size
        report = await sup.update("store", app.bundle(new))
        assert report.state_bytes == size
        # the file is read and closed before the hook runs: it holds bytes and no file
        assert await sup.call("store", "seen") == [True, "bytes", [], []]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_binary_written_into_the_state_file_cannot_be_executed(tmp_path: Path) -> None:
    """THREATS 2 (what a feature wrote must not run): the state file is a memfd the
    container did not create, so the container's own memfd rule does not cover it; it is
    made without execute bits, for good."""
    app = TestApp(tmp_path / "app")
    old = app.feature("store", limits=LIMITS, restart=restart(), policy={"update": QUICK})

    @old.service("ping")
    async def _ping(ctx: Context, request: Any) -> str:
        return "pong"

    @old.export_state
    async def _export(ctx: Context) -> bytes:
        outcomes: dict[str, str] = {}
        for fd in _state_file_fds():
            os.pwrite(fd, tiny_elf(42), 0)
            outcomes["exec the descriptor"] = exec_outcome(fd)
            outcomes["exec /proc/self/fd"] = exec_outcome(f"/proc/self/fd/{fd}")
            try:
                os.fchmod(fd, 0o755)
                outcomes["chmod +x"] = "done"
            except OSError as exc:
                outcomes["chmod +x"] = errno.errorcode.get(exc.errno or 0, str(exc))
            os.ftruncate(fd, 0)  # the export proper is written after this hook returns
        return json.dumps(outcomes).encode()

    new = app.version("store", "2.0.0")
    seen: dict[str, Any] = {}

    @new.import_state
    async def _import(ctx: Context, from_version: str, data: bytes) -> None:
        seen.update(json.loads(data))

    @new.service("seen")
    async def _seen(ctx: Context, request: Any) -> dict[str, Any]:
        return seen

    async with app.open() as sup:
        assert await sup.call("store", "ping") == "pong"
        await sup.update("store", app.bundle(new))
        outcomes = await sup.call("store", "seen")
    assert set(outcomes) == {"exec the descriptor", "exec /proc/self/fd", "chmod +x"}
    assert outcomes["exec the descriptor"] in {"EACCES", "EPERM"}, outcomes
    assert outcomes["exec /proc/self/fd"] in {"EACCES", "EPERM"}, outcomes
    assert outcomes["chmod +x"] in {"EPERM", "EACCES"}, outcomes
    assert capsule.testing.leftovers() == []
