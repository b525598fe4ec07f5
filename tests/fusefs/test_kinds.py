"""Each kind of mount (ro, rw, private, cow) and /capsule/, through real kernel mounts:
what a container does through the mount, and what reaches the backing directories."""

# Token ids in these tests are names that audit lines carry, not secrets.
# ruff: noqa: S105, S106

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fusefs import MountKind, ServerProcess
from tests.fusefs._support import denial, errno_of, mount, read, view, write


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A small volume: a file, a subdirectory with a file, and a symlink to '/'."""
    root = tmp_path / "volume"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "sub" / "b.txt").write_bytes(b"beneath\n")
    (root / "root").symlink_to("/")
    return root


def _tree(root: Path) -> dict[str, bytes | str | None]:
    """Every entry beneath ``root``: file contents, link targets, None for directories."""
    found: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = os.readlink(path)
        elif path.is_dir():
            found[name] = None
        else:
            found[name] = path.read_bytes()
    return found


def test_ro_mount_reads_and_refuses_every_write_with_an_audit(
    mountpoint: Path, volume: Path
) -> None:
    before = _tree(volume)
    spec = view(mount("/data", MountKind.RO, volume, token="tok-ro"))
    with ServerProcess(spec, str(mountpoint)) as server:
        data = mountpoint / "data"
        assert read(data / "a.txt") == b"hello\n"
        assert read(data / "sub" / "b.txt") == b"beneath\n"
        assert sorted(os.listdir(data)) == ["a.txt", "root", "sub"]
        assert os.stat(data / "a.txt").st_mode & 0o222 == 0  # shown read-only
        writes = {
            "create": lambda: write(data / "new", b"x"),
            "open": lambda: os.open(data / "a.txt", os.O_WRONLY),
            "truncate": lambda: os.truncate(data / "a.txt", 0),
            "chmod": lambda: os.chmod(data / "a.txt", 0o777),  # noqa: S103 - refused
            "mkdir": lambda: os.mkdir(data / "d"),
            "rmdir": lambda: os.rmdir(data / "sub"),
            "unlink": lambda: os.unlink(data / "a.txt"),
            "rename": lambda: os.rename(data / "a.txt", data / "b.txt"),
            "symlink": lambda: os.symlink("a.txt", data / "l"),
            "link": lambda: os.link(data / "a.txt", data / "hard"),
        }
        outcomes = {name: errno_of(action) for name, action in writes.items()}
        assert outcomes == dict.fromkeys(writes, errno.EROFS)
        refused = denial(server, operation="create", path="/data/new")
        assert refused.capability == "fs:write:/data/"
        assert refused.mount == "/data"
        assert refused.token == "tok-ro"
        assert refused.uid == 0
        assert "read-only" in refused.reason
        for operation in ("open", "unlink", "mkdir", "rename", "setattr", "link"):
            assert denial(server, operation=operation).capability == "fs:write:/data/"
    assert _tree(volume) == before


def test_rw_mount_changes_reach_the_backing_directory(mountpoint: Path, volume: Path) -> None:
    spec = view(mount("/work", MountKind.RW, volume), uid=4321, gid=4322)
    with ServerProcess(spec, str(mountpoint)) as server:
        work = mountpoint / "work"
        write(work / "new.txt", b"written through the view")
        assert (volume / "new.txt").read_bytes() == b"written through the view"
        with open(work / "new.txt", "ab") as f:
            f.write(b"!")
        assert (volume / "new.txt").read_bytes() == b"written through the view!"
        info = os.stat(work / "new.txt")
        assert (info.st_uid, info.st_gid) == (4321, 4322)  # owned by the container's uid

        os.rename(work / "new.txt", work / "sub" / "moved.txt")
        assert not (volume / "new.txt").exists()
        assert (volume / "sub" / "moved.txt").read_bytes() == b"written through the view!"

        os.mkdir(work / "dir")
        assert (volume / "dir").is_dir()
        os.symlink("../a.txt", work / "dir" / "link")
        assert os.readlink(volume / "dir" / "link") == "../a.txt"
        assert read(work / "dir" / "link") == b"hello\n"
        os.link(work / "a.txt", work / "dir" / "hard")
        assert os.stat(volume / "a.txt").st_nlink == 2

        os.chmod(work / "a.txt", 0o755)  # noqa: S103 - a plain mode change is served
        assert stat.S_IMODE(os.stat(volume / "a.txt").st_mode) == 0o755
        os.truncate(work / "a.txt", 2)
        assert (volume / "a.txt").read_bytes() == b"he"

        os.unlink(work / "dir" / "link")
        os.unlink(work / "dir" / "hard")
        os.rmdir(work / "dir")
        os.unlink(work / "sub" / "moved.txt")
        assert sorted(os.listdir(volume)) == ["a.txt", "root", "sub"]
        assert sorted(os.listdir(volume / "sub")) == ["b.txt"]
        assert errno_of(os.rmdir, work / "sub") == errno.ENOTEMPTY
        assert errno_of(os.mknod, work / "fifo", stat.S_IFIFO | 0o600) == errno.EACCES
        assert "FIFO" in denial(server, operation="mknod", path="/work/fifo").reason
    assert not (volume / "fifo").exists()


def test_private_mount_is_created_and_kept_across_restarts(
    mountpoint: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "private" / "feat"
    spec = view(mount("/state", MountKind.PRIVATE, storage))
    with ServerProcess(spec, str(mountpoint)):
        assert os.listdir(mountpoint / "state") == []
        os.mkdir(mountpoint / "state" / "db")
        write(mountpoint / "state" / "db" / "rows", b"1\n2\n")
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    assert (storage / "db" / "rows").read_bytes() == b"1\n2\n"
    with ServerProcess(spec, str(mountpoint)):
        assert read(mountpoint / "state" / "db" / "rows") == b"1\n2\n"


def test_cow_mount_keeps_changes_to_itself_and_across_restarts(
    mountpoint: Path, volume: Path, tmp_path: Path
) -> None:
    before = _tree(volume)
    upper = tmp_path / "upper"
    spec = view(mount("/cache", MountKind.COW, volume, upper=upper))
    with ServerProcess(spec, str(mountpoint)):
        cache = mountpoint / "cache"
        with open(cache / "a.txt", "ab") as f:
            f.write(b"mine\n")
        write(cache / "new.txt", b"new\n")
        os.unlink(cache / "sub" / "b.txt")
        assert read(cache / "a.txt") == b"hello\nmine\n"
        assert sorted(os.listdir(cache)) == ["a.txt", "new.txt", "root", "sub"]
        assert os.listdir(cache / "sub") == []
        assert _tree(volume) == before  # the lower directory is untouched
    assert (upper / "changes" / "a.txt").read_bytes() == b"hello\nmine\n"
    other = tmp_path / "mnt2"
    other.mkdir()
    second = view(mount("/cache", MountKind.COW, volume, upper=tmp_path / "upper2"))
    with ServerProcess(second, str(other)):  # another view of the same lower directory
        assert read(other / "cache" / "a.txt") == b"hello\n"
        assert not (other / "cache" / "new.txt").exists()
        assert read(other / "cache" / "sub" / "b.txt") == b"beneath\n"
    with ServerProcess(spec, str(mountpoint)):  # the first view again
        assert read(mountpoint / "cache" / "a.txt") == b"hello\nmine\n"
        assert read(mountpoint / "cache" / "new.txt") == b"new\n"
        assert not (mountpoint / "cache" / "sub" / "b.txt").exists()
    assert _tree(volume) == before
    assert not list((tmp_path / "mnt2").iterdir())


def test_ro_and_cow_views_of_one_volume_served_at_once(
    mountpoint: Path, volume: Path, tmp_path: Path
) -> None:
    before = _tree(volume)
    reader_point = tmp_path / "reader"
    reader_point.mkdir()
    writer = view(mount("/v", MountKind.COW, volume, upper=tmp_path / "upper"), owner="writer")
    reader = view(mount("/v", MountKind.RO, volume), owner="reader", cache_timeout=0.0)
    with (
        ServerProcess(writer, str(mountpoint)) as cow,
        ServerProcess(reader, str(reader_point)) as ro,
    ):
        assert cow.process.pid != ro.process.pid
        assert read(reader_point / "v" / "a.txt") == b"hello\n"
        write(mountpoint / "v" / "a.txt", b"changed by the writer\n")
        write(mountpoint / "v" / "only-mine", b"x")
        os.rename(mountpoint / "v" / "sub" / "b.txt", mountpoint / "v" / "renamed")
        assert read(mountpoint / "v" / "a.txt") == b"changed by the writer\n"
        assert read(reader_point / "v" / "a.txt") == b"hello\n"
        assert sorted(os.listdir(reader_point / "v")) == ["a.txt", "root", "sub"]
        assert read(reader_point / "v" / "sub" / "b.txt") == b"beneath\n"
        assert os.listdir(mountpoint / "v" / "sub") == []
        assert sorted(os.listdir(mountpoint / "v")) == [
            "a.txt",
            "only-mine",
            "renamed",
            "root",
            "sub",
        ]
    assert _tree(volume) == before


def test_capsule_directory_holds_the_info_files_and_is_read_only(
    mountpoint: Path, volume: Path, tmp_path: Path
) -> None:
    spec = view(
        mount("/data", MountKind.RO, volume, token="t1"),
        mount("/deep/work", MountKind.RW, tmp_path / "w", quota_bytes=1000, quota_inodes=5),
        info={"feature": "feat\n", "version": "1.2.3\n"},
    )
    (tmp_path / "w").mkdir()
    with ServerProcess(spec, str(mountpoint)):
        capsule = mountpoint / "capsule"
        assert sorted(os.listdir(mountpoint)) == ["capsule", "data", "deep"]
        assert os.listdir(mountpoint / "deep") == ["work"]
        assert sorted(os.listdir(capsule)) == ["feature", "mounts", "version"]
        assert read(capsule / "feature") == b"feat\n"
        assert read(capsule / "version") == b"1.2.3\n"
        write(mountpoint / "deep" / "work" / "f", b"12345")
        assert read(capsule / "mounts").decode().splitlines() == [
            "/data ro ro open bytes=0/- inodes=0/-",
            "/deep/work rw rw open bytes=5/1000 inodes=1/5",
        ]
        assert os.stat(capsule / "mounts").st_mode & 0o222 == 0
        refused = {
            "write": lambda: os.open(capsule / "feature", os.O_WRONLY),
            "append": lambda: os.open(capsule / "mounts", os.O_WRONLY | os.O_APPEND),
            "truncate": lambda: os.truncate(capsule / "feature", 0),
            "chmod": lambda: os.chmod(capsule / "feature", 0o666),  # noqa: S103 - refused
            "create": lambda: write(capsule / "new", b"x"),
            "mkdir": lambda: os.mkdir(capsule / "d"),
            "unlink": lambda: os.unlink(capsule / "feature"),
            "rename": lambda: os.rename(capsule / "feature", capsule / "other"),
            "rmdir": lambda: os.rmdir(capsule),
            "mkdir at the root": lambda: os.mkdir(mountpoint / "etc"),
            "symlink at the root": lambda: os.symlink("/", mountpoint / "up"),
        }
        outcomes = {name: errno_of(action) for name, action in refused.items()}
        assert outcomes == dict.fromkeys(refused, errno.EROFS)
        assert read(capsule / "feature") == b"feat\n"


def test_chmod_to_set_id_bits_is_refused_with_eperm(mountpoint: Path, volume: Path) -> None:
    """Set-id bits are never served: a chmod asking for them fails with EPERM (audited) and
    changes nothing, rather than succeeding with the bits silently dropped."""
    spec = view(mount("/work", MountKind.RW, volume, token="t-work"))
    with ServerProcess(spec, str(mountpoint)) as server:
        work = mountpoint / "work"
        for mode in (0o4755, 0o2755, 0o6755):
            assert errno_of(os.chmod, work / "a.txt", mode) == errno.EPERM, oct(mode)
        assert errno_of(os.chmod, work / "sub", 0o2775) == errno.EPERM
        assert stat.S_IMODE(os.stat(volume / "a.txt").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(volume / "sub").st_mode) == 0o755
        refused = denial(server, operation="chmod", path="/work/a.txt")
        assert refused.reason == "set-user-ID and set-group-ID bits are never served"
        assert refused.token == "t-work"
        os.chmod(work / "a.txt", 0o600)
        assert stat.S_IMODE(os.stat(volume / "a.txt").st_mode) == 0o600
