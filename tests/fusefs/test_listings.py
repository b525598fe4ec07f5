"""The listings of a view's open directories share a budget (``ViewSpec.listing_bytes``):
``opendir`` beyond it is ENOMEM and a Denied naming the budget, and closing directories
gives the budget back. A real mount; the caller is this test process."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

import pytest

from fusefs import MountKind, ServerProcess, ViewSpecError
from fusefs._listings import ENTRY_COST, LISTING_COST
from tests.fusefs._support import denial, errno_of, mount, view

NAMES: Final = 500
NAME: Final = 100  # bytes per name


def test_open_listings_beyond_the_budget_are_refused_and_closing_gives_it_back(
    mountpoint: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    for index in range(NAMES):
        (volume / f"{index:04d}".ljust(NAME, "x")).touch()
    listing = LISTING_COST + NAMES * (NAME + ENTRY_COST)
    ro = mount("/r", MountKind.RO, volume, token="t-r")  # noqa: S106 - a token id
    spec = view(ro, listing_bytes=3 * listing)
    with ServerProcess(spec, str(mountpoint)) as server:
        directory = mountpoint / "r"
        held = [os.open(directory, os.O_RDONLY | os.O_DIRECTORY) for _ in range(3)]
        assert errno_of(os.open, directory, os.O_RDONLY | os.O_DIRECTORY) == errno.ENOMEM
        assert errno_of(os.listdir, mountpoint / "capsule") == errno.ENOMEM  # one budget
        denied = denial(server, operation="readdir", path="/r")
        assert f"more than the view's {3 * listing}" in denied.reason
        assert (denied.mount, denied.token) == ("/r", "t-r")
        os.close(held.pop())
        assert len(os.listdir(directory)) == NAMES  # one listing's worth came back
        for fd in held:
            os.close(fd)
        assert len(os.listdir(mountpoint / "capsule")) > 0


def test_a_listing_budget_must_be_positive() -> None:
    with pytest.raises(ViewSpecError, match="listing_bytes=0"):
        view(listing_bytes=0).validate()
