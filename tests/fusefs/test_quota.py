"""THREATS.md item 9: quotas of bytes and inodes per writable mount, enforced by the server
(EDQUOT and a Denied naming the quota), freed by deletes and truncation, and counted again
from what the volume holds when a server starts."""

# Token ids in these tests are names that audit lines carry, not secrets.
# ruff: noqa: S105, S106

from __future__ import annotations

import errno
import os
from pathlib import Path

from fusefs import MountKind, ServerProcess, _sys
from tests.fusefs._support import (
    denial,
    errno_of,
    held_on_host,
    mount,
    read,
    view,
    wait_until,
    write,
)


def _mounts_line(mountpoint: Path, view_path: str) -> str:
    lines = read(mountpoint / "capsule" / "mounts").decode().splitlines()
    return next(line for line in lines if line.startswith(view_path + " "))


def test_byte_quota_refuses_growth_past_it(mountpoint: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = view(mount("/w", MountKind.RW, volume, quota_bytes=1000, token="t-w"))
    with ServerProcess(spec, str(mountpoint)) as server:
        w = mountpoint / "w"
        write(w / "a", b"a" * 600)
        assert errno_of(write, w / "b", b"b" * 500) == errno.EDQUOT
        refused = denial(server, operation="write", path="/w/b")
        assert "quota" in refused.reason
        assert "1000 bytes" in refused.reason
        assert (refused.mount, refused.token) == ("/w", "t-w")
        assert (volume / "b").read_bytes() == b""  # created, but nothing written
        write(w / "b", b"b" * 400)  # exactly up to the quota
        assert _mounts_line(mountpoint, "/w") == "/w rw rw open bytes=1000/1000 inodes=2/-"
        fd = os.open(w / "a", os.O_WRONLY)
        try:
            os.pwrite(fd, b"A" * 600, 0)  # overwriting in place costs nothing
            assert errno_of(os.pwrite, fd, b"A", 600) == errno.EDQUOT
        finally:
            os.close(fd)
        assert os.statvfs(w).f_bavail == 0
    assert (volume / "a").read_bytes() == b"A" * 600


def test_deleting_and_truncating_free_quota(mountpoint: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = view(mount("/w", MountKind.RW, volume, quota_bytes=1000))
    with ServerProcess(spec, str(mountpoint)) as server:
        w = mountpoint / "w"
        write(w / "a", b"a" * 900)
        assert errno_of(write, w / "b", b"b" * 200) == errno.EDQUOT
        os.unlink(w / "a")
        write(w / "b", b"b" * 900)  # the deleted file's bytes are free again
        assert errno_of(os.truncate, w / "b", 1001) == errno.EDQUOT  # growth by truncate
        assert denial(server, operation="truncate", path="/w/b").reason.startswith("over its")
        os.truncate(w / "b", 100)
        assert _mounts_line(mountpoint, "/w").startswith("/w rw rw open bytes=100/1000")
        write(w / "c", b"c" * 900)
        write(w / "c", b"C" * 900)  # O_TRUNC gives back the old size first
        os.rename(w / "c", w / "b")  # replacing a file gives back its bytes
        assert _mounts_line(mountpoint, "/w").startswith("/w rw rw open bytes=900/1000")
        write(w / "d", b"d" * 100)
        assert errno_of(write, w / "e", b"e") == errno.EDQUOT
    assert sorted(os.listdir(volume)) == ["b", "d", "e"]
    assert (volume / "b").read_bytes() == b"C" * 900


def test_inode_quota_counts_files_directories_and_links(mountpoint: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = view(mount("/p", MountKind.PRIVATE, volume, quota_inodes=3, token="t-p"))
    with ServerProcess(spec, str(mountpoint)) as server:
        p = mountpoint / "p"
        write(p / "one", b"1")
        os.mkdir(p / "two")
        os.symlink("one", p / "three")
        assert errno_of(write, p / "four", b"4") == errno.EDQUOT
        assert errno_of(os.mkdir, p / "four") == errno.EDQUOT
        assert errno_of(os.symlink, "x", p / "four") == errno.EDQUOT
        refused = denial(server, operation="create", path="/p/four")
        assert refused.reason == "over its quota of 3 inodes"
        assert refused.token == "t-p"
        os.link(p / "one", p / "two" / "hard")  # a second name for an inode costs nothing
        os.unlink(p / "two" / "hard")
        os.unlink(p / "one")
        os.rmdir(p / "two")
        write(p / "four", b"4")
        os.mkdir(p / "five")
        assert errno_of(write, p / "six", b"6") == errno.EDQUOT
        assert os.statvfs(p).f_favail == 0
    assert sorted(os.listdir(volume)) == ["five", "four", "three"]


def test_quota_counts_what_the_volume_already_holds(mountpoint: Path, tmp_path: Path) -> None:
    """A restarted server does not start from zero: the usage is measured at start."""
    volume = tmp_path / "volume"
    (volume / "old").mkdir(parents=True)
    (volume / "old" / "data").write_bytes(b"x" * 700)
    spec = view(mount("/w", MountKind.RW, volume, quota_bytes=1000, quota_inodes=4))
    with ServerProcess(spec, str(mountpoint)):
        assert _mounts_line(mountpoint, "/w") == "/w rw rw open bytes=700/1000 inodes=2/4"
        assert errno_of(write, mountpoint / "w" / "big", b"b" * 400) == errno.EDQUOT
        write(mountpoint / "w" / "big", b"b" * 300)
        write(mountpoint / "w" / "more", b"")
    with ServerProcess(spec, str(mountpoint)):  # the same volume, served again
        assert _mounts_line(mountpoint, "/w") == "/w rw rw open bytes=1000/1000 inodes=4/4"
        assert errno_of(write, mountpoint / "w" / "big", b"b" * 301) == errno.EDQUOT
        assert errno_of(write, mountpoint / "w" / "another", b"") == errno.EDQUOT
    assert sorted(os.listdir(volume)) == ["big", "more", "old"]


def test_cow_quota_counts_only_the_views_own_changes(mountpoint: Path, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "large").write_bytes(b"l" * 5000)  # bigger than the quota, but not this view's
    spec = view(
        mount("/c", MountKind.COW, lower, upper=tmp_path / "upper", quota_bytes=1000),
    )
    with ServerProcess(spec, str(mountpoint)):
        assert read(mountpoint / "c" / "large") == b"l" * 5000
        write(mountpoint / "c" / "mine", b"m" * 800)
        assert errno_of(write, mountpoint / "c" / "more", b"m" * 300) == errno.EDQUOT
    with ServerProcess(spec, str(mountpoint)):
        assert _mounts_line(mountpoint, "/c").startswith("/c cow rw open bytes=800/1000")
    assert sorted(os.listdir(lower)) == ["large"]


def _usage(mountpoint: Path, view_path: str) -> tuple[int, int]:
    """The quota's view of ``view_path``: (bytes, inodes) from /capsule/mounts."""
    fields = dict(f.split("=") for f in _mounts_line(mountpoint, view_path).split()[4:])
    return int(fields["bytes"].split("/")[0]), int(fields["inodes"].split("/")[0])


def test_unlinked_open_files_stay_charged_until_their_last_close(
    mountpoint: Path, tmp_path: Path
) -> None:
    """The reported hole: files written, kept open and unlinked, eight times over, made the
    server hold eight quotas' worth of deleted files on the host disk."""
    volume = tmp_path / "volume"
    volume.mkdir()
    quota = 64 * 1024
    spec = view(mount("/w", MountKind.RW, volume, quota_bytes=quota, token="t-w"))
    with ServerProcess(spec, str(mountpoint)) as server:
        w = mountpoint / "w"
        kept: list[int] = []
        refused = 0
        try:
            for i in range(8):
                fd = os.open(w / f"f{i}", os.O_RDWR | os.O_CREAT, 0o644)
                kept.append(fd)
                if errno_of(os.write, fd, b"x" * quota) == errno.EDQUOT:
                    refused += 1
                os.unlink(w / f"f{i}")
                assert held_on_host(volume, server.process.pid)[0] <= quota
            assert refused == 7  # only the first fitted: the others found it still held
            assert denial(server, operation="write", path="/w/f1").reason.startswith("over its")
            assert _usage(mountpoint, "/w") == (quota, 8)  # eight unlinked files, all held
            assert errno_of(os.write, kept[0], b"y") == errno.EDQUOT  # nor through its own
            while len(kept) > 1:
                os.close(kept.pop())
            assert _usage(mountpoint, "/w") == (quota, 1)  # closed: the host freed them
            assert errno_of(write, w / "g", b"g") == errno.EDQUOT
        finally:
            for fd in kept:
                os.close(fd)
        write(w / "g", b"g" * quota)  # its last close gave the first file back
        assert _usage(mountpoint, "/w") == (quota, 1)
        assert held_on_host(volume, server.process.pid) == (quota, 1)


def test_refused_renames_of_directories_free_no_inodes(mountpoint: Path, tmp_path: Path) -> None:
    """The reported hole: a rename over a directory gave back the directory it would
    replace before the host refused it (ENOTEMPTY), one inode each time."""
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = view(mount("/p", MountKind.PRIVATE, volume, quota_inodes=4))
    with ServerProcess(spec, str(mountpoint)) as server:
        p = mountpoint / "p"
        os.mkdir(p / "a")
        os.makedirs(p / "b" / "c")
        for _ in range(8):
            assert errno_of(os.rename, p / "a", p / "b") == errno.ENOTEMPTY
        assert _usage(mountpoint, "/p") == (0, 3)
        made = [errno_of(os.mkdir, p / f"x{i}") for i in range(8)]
        assert made == [None] + [errno.EDQUOT] * 7
        assert held_on_host(volume, server.process.pid) == (0, 4)
        os.rename(p / "a", p / "b" / "c")  # over an empty directory: that one is freed
        wait_until(lambda: _usage(mountpoint, "/p") == (0, 3), what="the directory given back")
        assert held_on_host(volume, server.process.pid) == (0, 3)


def _cow_volume(tmp_path: Path) -> Path:
    """A volume of two 5,000-byte files and a directory holding a 100-byte one."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "a").write_bytes(b"a" * 5000)
    (lower / "b").write_bytes(b"b" * 5000)
    (lower / "d" / "x").write_bytes(b"x" * 100)
    return lower


def test_cow_copies_up_are_charged_in_full_before_they_happen(
    mountpoint: Path, tmp_path: Path
) -> None:
    lower = _cow_volume(tmp_path)
    changes = tmp_path / "upper" / "changes"
    spec = view(mount("/c", MountKind.COW, lower, upper=tmp_path / "upper", quota_bytes=1000))
    with ServerProcess(spec, str(mountpoint)) as server:
        c = mountpoint / "c"
        for name in ("a", "b"):  # a 1-byte change would copy 5,000 bytes into the layer
            assert errno_of(os.open, c / name, os.O_WRONLY | os.O_APPEND) == errno.EDQUOT
        refused = denial(server, operation="open", path="/c/a")
        assert "over its quota of 1000 bytes" in refused.reason
        assert errno_of(os.truncate, c / "b", 1) == errno.EDQUOT
        assert errno_of(os.chmod, c / "b", 0o600) == errno.EDQUOT
        assert errno_of(os.link, c / "a", c / "a2") == errno.EDQUOT
        assert errno_of(os.rename, c / "a", c / "a3") == errno.EDQUOT
        d, top = os.open(c / "d", os.O_PATH), os.open(c, os.O_PATH)
        try:  # an exchange copies both files up, the 5,000 bytes of a as well
            exchange = _sys.renameat2
            assert errno_of(exchange, d, b"x", top, b"a", _sys.RENAME_EXCHANGE) == errno.EDQUOT
        finally:
            os.close(d)
            os.close(top)
        write(c / "d" / "x", b"y" * 100)  # 100 bytes and two inodes (d, x): within the quota
        assert _usage(mountpoint, "/c") == held_on_host(changes, server.process.pid) == (100, 2)
    assert (lower / "a").read_bytes() == b"a" * 5000


def test_cow_whiteouts_are_charged_and_removals_give_back_only_what_the_layer_held(
    mountpoint: Path, tmp_path: Path
) -> None:
    lower = _cow_volume(tmp_path)
    changes = tmp_path / "upper" / "changes"
    spec = view(
        mount(
            "/c",
            MountKind.COW,
            lower,
            upper=tmp_path / "upper",
            quota_bytes=12000,
            quota_inodes=4,
        )
    )
    with ServerProcess(spec, str(mountpoint)) as server:
        c = mountpoint / "c"

        def counted(expected: tuple[int, int]) -> None:
            held = held_on_host(changes, server.process.pid)
            assert _usage(mountpoint, "/c") == held == expected

        with open(c / "a", "ab") as f:  # copies a up: 5,000 bytes, then one more
            f.write(b"!")
        counted((5001, 1))
        with open(c / "b", "r+b") as f:  # in place: the copy alone
            f.write(b"B")
        counted((10001, 2))
        os.unlink(c / "b")  # the layer's copy goes, a whiteout hides the volume's file
        counted((5001, 2))
        os.unlink(c / "a")
        counted((0, 2))
        os.unlink(c / "d" / "x")  # a whiteout in a copy of d
        counted((0, 4))
        assert errno_of(write, c / "n", b"") == errno.EDQUOT  # a fifth inode
        assert denial(server, operation="create", path="/c/n").reason.endswith("4 inodes")
        os.rmdir(c / "d")  # the copy of d and its whiteout go, d's own whiteout comes
        counted((0, 3))
        write(c / "a", b"new")  # a file of the layer's own in the place of a's whiteout
        counted((3, 3))
        os.unlink(c / "a")
        counted((0, 3))
    assert sorted(os.listdir(lower)) == ["a", "b", "d"]
    with ServerProcess(spec, str(mountpoint)) as server:  # counted again at start
        assert _usage(mountpoint, "/c") == held_on_host(changes, server.process.pid) == (0, 3)
