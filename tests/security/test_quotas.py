"""THREATS 9: a feature cannot make the host hold more than its view's quota, through
files it keeps open after unlinking them or through renames the host refuses, nor, in a
copy-on-write view, through the copies its changes make of the volume's files and the
whiteouts its removals leave.

The attacks run inside a real container, through its view; the host judges what the
volume holds plus the deleted files its view server still has open.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
import trio

from capsule.feature import Context
from capsule.testing import TestApp, leftovers
from tests.fusefs._support import held_on_host

_MIB = 1 << 20
_held: dict[str, list[int]] = {"fds": []}  # in the container: files it keeps open


def _outcome(action: Any, *args: Any) -> str:
    try:
        action(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


async def hold_unlinked(ctx: Context, request: Any) -> Any:
    """Write a quota's worth into each of eight files, keeping each open and unlinking it."""
    outcomes = []
    for i in range(8):
        fd = os.open(f"/notes/f{i}", os.O_RDWR | os.O_CREAT, 0o644)
        _held["fds"].append(fd)
        outcomes.append(_outcome(os.write, fd, b"x" * _MIB))
        os.unlink(f"/notes/f{i}")
    return outcomes


async def close_and_write(ctx: Context, request: Any) -> Any:
    """Close what it held, then write a quota's worth again."""
    while _held["fds"]:
        os.close(_held["fds"].pop())
    fd = os.open("/notes/again", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        return _outcome(os.write, fd, b"y" * _MIB)
    finally:
        os.close(fd)


async def rename_over_full(ctx: Context, request: Any) -> Any:
    """Rename a directory over a non-empty one again and again, then make directories."""
    os.mkdir("/tree/a")
    os.makedirs("/tree/b/c")
    renames = [_outcome(os.rename, "/tree/a", "/tree/b") for _ in range(16)]
    made = [_outcome(os.mkdir, f"/tree/x{i}") for i in range(16)]
    return {"renames": sorted(set(renames)), "made": made}


@pytest.mark.trio
async def test_unlinked_open_files_and_refused_renames_stay_within_the_quota(
    capsule_app: TestApp,
) -> None:
    notes = capsule_app.volume("notes")
    tree = capsule_app.volume("tree")
    probe = capsule_app.feature(
        "probe",
        policy={
            "fs": [
                {"path": "/notes", "volume": "notes", "mode": "rw", "quota": "1MiB"},
                {"path": "/tree", "volume": "tree", "mode": "rw", "inodes": 4},
            ]
        },
    )
    for handler in (hold_unlinked, close_and_write, rename_over_full):
        probe.service(handler.__name__)(handler)

    with trio.fail_after(60):
        async with capsule_app.open() as sup:
            instance = sup.feature("probe").instance
            assert instance is not None
            assert instance.view is not None
            server = instance.view.pid

            outcomes = await sup.call("probe", "hold_unlinked")
            assert outcomes == ["ok"] + ["EDQUOT"] * 7
            assert held_on_host(notes, server) == (_MIB, 8)  # all held, one quota's worth
            assert await sup.call("probe", "close_and_write") == "ok"
            assert held_on_host(notes, server) == (_MIB, 1)

            got = await sup.call("probe", "rename_over_full")
            assert got == {"renames": ["ENOTEMPTY"], "made": ["ok"] + ["EDQUOT"] * 15}
            assert held_on_host(tree, server) == (0, 4)
    assert sorted(os.listdir(notes)) == ["again"]
    assert sorted(os.listdir(tree)) == ["a", "b", "x0"]
    assert leftovers() == []


async def change_the_volume(ctx: Context, request: Any) -> Any:
    """A 1-byte change to each of the volume's files, then remove them all."""
    appended = []
    for name in ("one", "two"):
        try:
            fd = os.open(f"/draft/{name}", os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            appended.append(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
            continue
        try:
            appended.append(_outcome(os.write, fd, b"!"))
        finally:
            os.close(fd)
    removed = [_outcome(os.unlink, f"/draft/{name}") for name in ("one", "two", "three")]
    return {"appended": appended, "removed": removed}


@pytest.mark.trio
async def test_copies_and_whiteouts_of_a_cow_view_stay_within_its_quota(
    capsule_app: TestApp,
) -> None:
    words = capsule_app.volume("words")
    for name in ("one", "two", "three"):
        (words / name).write_bytes(b"w" * 5000)
    probe = capsule_app.feature(
        "probe",
        policy={
            "fs": [{"path": "/draft", "volume": "words", "mode": "cow", "quota": 1000, "inodes": 2}]
        },
    )
    probe.service("change_the_volume")(change_the_volume)

    with trio.fail_after(60):
        async with capsule_app.open() as sup:
            instance = sup.feature("probe").instance
            assert instance is not None
            assert instance.view is not None
            changes = capsule_app.root / "state" / "cow" / "probe" / "draft" / "changes"

            got = await sup.call("probe", "change_the_volume")
            assert got == {"appended": ["EDQUOT", "EDQUOT"], "removed": ["ok", "ok", "EDQUOT"]}
            assert held_on_host(changes, instance.view.pid) == (0, 2)  # two whiteouts
    assert sorted(os.listdir(words)) == ["one", "three", "two"]
    assert leftovers() == []
