"""The fusefs suite: real views mounted through the kernel at a per-test mount point.

Every test leaves nothing behind: no mount beneath its temporary directory and no child
process; both are checked after each test. Needs /dev/fuse (and root for some tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs import unmount
from tests.fusefs._support import children, mountpoints_beneath


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the mount tests, with the reason, where FUSE cannot be used."""
    usable = os.access("/dev/fuse", os.R_OK | os.W_OK)
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="/dev/fuse is not usable here")
    for item in items:
        needs_mount = "mountpoint" in getattr(item, "fixturenames", ())
        if not usable and here in item.path.parents and needs_mount:
            item.add_marker(skip)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """An empty directory to mount a view at; after the test nothing is mounted beneath
    the test's temporary directory and no child process is left."""
    before = children()
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    left = mountpoints_beneath(tmp_path)
    for path in sorted(left, key=len, reverse=True):
        unmount(path)  # so that a failing test does not break the ones after it
    assert not left, f"left mounted: {left}"
    leaked = children() - before
    assert not leaked, f"child processes left behind: {sorted(leaked)}"
