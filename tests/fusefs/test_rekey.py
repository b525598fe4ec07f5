"""Renewed grants (THREATS.md item 24 for files): a mount moves from a token to its renewal
with its files left open and its expiry moved on; a closed mount is never reopened."""

# Token ids in these tests are names that audit lines carry, not secrets.
# ruff: noqa: S106

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from fusefs import MountKind, Rekeyed, Revoked, ServerProcess
from tests.fusefs._support import errno_of, mount, read, view


def _volume(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(b"x" * 10000)
    return data


def test_a_renewal_moves_the_mount_on_with_its_files_open(mountpoint: Path, tmp_path: Path) -> None:
    data = _volume(tmp_path)
    expires = time.time() + 1.5
    spec = view(
        mount("/data", MountKind.RO, data, token="t-1", expires=expires),
        info={"tokens": "t-1\n", "feature": "feat\n"},
    )
    with ServerProcess(spec, str(mountpoint)) as server:
        fd = os.open(mountpoint / "data" / "file", os.O_RDONLY)
        try:
            assert os.pread(fd, 10, 0) == b"x" * 10
            answer = server.rekey(
                {"t-1": "t-2"},
                {"t-2": time.time() + 3600},
                {"tokens": "t-2\n", "unknown": "ignored\n"},
            )
            assert answer == Rekeyed(seq=answer.seq, mounts=("/data",), closed={})
            time.sleep(max(0.0, expires - time.time()) + 0.5)  # past the first grant's end
            assert os.pread(fd, 10, 5000) == b"x" * 10  # the same open file, still served
            assert read(mountpoint / "data" / "file") == b"x" * 10000
            assert read(mountpoint / "capsule" / "tokens") == b"t-2\n"
            assert sorted(os.listdir(mountpoint / "capsule")) == ["feature", "mounts", "tokens"]
            assert not [m for m in server.messages if isinstance(m, Revoked)]  # no expiry
            # the old id no longer names the mount; the new one does
            assert server.revoke("t-1").mounts == ()
            assert server.revoke("t-2").mounts == ("/data",)
            assert errno_of(os.pread, fd, 10, 0) == errno.EACCES
        finally:
            os.close(fd)


def test_a_renewal_never_reopens_a_closed_mount(mountpoint: Path, tmp_path: Path) -> None:
    data = _volume(tmp_path)
    spec = view(
        mount("/data", MountKind.RO, data, token="t-1"),
        mount("/late", MountKind.RO, data, token="t-late", expires=time.time() + 0.5),
    )
    with ServerProcess(spec, str(mountpoint)) as server:
        assert server.revoke("t-1").mounts == ("/data",)
        time.sleep(0.6)
        answer = server.rekey(
            {"t-1": "t-2", "t-late": "t-late-2"}, {"t-2": time.time() + 60, "t-late-2": 1e12}
        )
        assert answer.mounts == ()
        assert answer.closed == {"/data": "revoked", "/late": "expired"}
        assert errno_of(os.stat, mountpoint / "data" / "file") == errno.EACCES
        assert errno_of(os.stat, mountpoint / "late" / "file") == errno.EACCES
