"""THREATS.md item 3 (and 4): symlink, '..', hardlink, rename and mount tricks against a view.

The server resolves every name beneath a mount's root descriptor, one component at a time,
never following a symlink and never crossing into another file system. Clients that play
the container run chrooted into the mount point, so their own kernel resolves absolute
symlinks and '..' inside the view, as a container's would.
"""

# Token ids in these tests are names that audit lines carry, not secrets.
# ruff: noqa: S106

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from fusefs import MountKind, ServerProcess, ViewSpec
from tests.fusefs._support import client, denial, errno_of, mount, needs_root, read, view, write


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three volumes (read-only data, read-write work, private) with a file each."""
    data, work, private = (tmp_path / name for name in ("data", "work", "private"))
    for root in (data, work, private):
        (root / "sub").mkdir(parents=True)
        (root / "file").write_bytes(f"{root.name}\n".encode())
    (data / "root").symlink_to("/")
    return data, work, private


def _view(data: Path, work: Path, private: Path, **options: object) -> ViewSpec:
    return view(
        mount("/data", MountKind.RO, data, token="t-data"),
        mount("/work", MountKind.RW, work, token="t-work"),
        mount("/private", MountKind.PRIVATE, private, token="t-private"),
        **options,
    )


def test_symlinks_are_served_as_links_never_followed(
    mountpoint: Path, volumes: tuple[Path, Path, Path]
) -> None:
    data, work, _ = volumes
    (work / "esc").symlink_to("/etc")  # made on the host: the view refuses to make them
    (work / "up").symlink_to("../../../../../..")
    with ServerProcess(_view(*volumes), str(mountpoint)):
        assert os.readlink(mountpoint / "data" / "root") == "/"
        assert stat.S_ISLNK(os.lstat(mountpoint / "data" / "root").st_mode)
        assert os.readlink(mountpoint / "work" / "esc") == "/etc"  # served, not resolved
        assert os.readlink(mountpoint / "work" / "up") == "../../../../../.."
        fd = os.open(mountpoint / "work" / "esc", os.O_RDONLY | os.O_NOFOLLOW | os.O_PATH)
        try:
            assert stat.S_ISLNK(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        assert errno_of(os.open, mountpoint / "data" / "root", os.O_RDONLY | os.O_NOFOLLOW) == (
            errno.ELOOP
        )
    assert os.readlink(data / "root") == "/"


def test_symlinks_that_lead_out_of_a_writable_mount_are_refused(
    mountpoint: Path, volumes: tuple[Path, Path, Path]
) -> None:
    """A host program walking a read-write volume would follow a symlink the feature left
    there: one to an absolute path, or one that climbs out of the mount, is refused with
    EPERM (audited) and never reaches the volume; links that stay inside are made."""
    _, work, private = volumes
    (work / "a" / "b").mkdir(parents=True)
    with ServerProcess(_view(*volumes), str(mountpoint)) as server:
        inside = mountpoint / "work"
        refused = {
            "/etc": inside / "abs",
            "/": inside / "a" / "root",
            "..": inside / "up",
            "../work/file": inside / "sideways",
            "../../..": inside / "a" / "b" / "up3",
            "b/../../..": inside / "a" / "after-name",
            "./.././../x": inside / "a" / "dotted",
            "x/..": inside / "back",
        }
        for target, link in refused.items():
            assert errno_of(os.symlink, target, link) == errno.EPERM, target
            assert not os.path.lexists(work / link.relative_to(inside)), target
        assert errno_of(os.symlink, "/etc", mountpoint / "private" / "abs") == errno.EPERM
        allowed = {
            "file": inside / "to-file",
            "a/b": inside / "to-b",
            "../file": inside / "a" / "to-file",
            "../../a": inside / "a" / "b" / "to-a",
            "./b/": inside / "a" / "dot-b",
        }
        for target, link in allowed.items():
            os.symlink(target, link)
            assert os.readlink(work / link.relative_to(inside)) == target
        assert not os.path.lexists(private / "abs")
        denied = denial(server, operation="symlink", path="/work/abs")
        assert denied.reason == "a symlink to an absolute path is refused"
        assert denied.token == "t-work"  # noqa: S105 - a token id, not a secret
        assert denial(server, path="/work/up").reason == (
            "a symlink that leads out of its mount is refused"
        )
        assert denial(server, path="/work/back").reason == (
            "a symlink with '..' after a name is refused"
        )


@needs_root
def test_dotdot_and_symlinks_resolve_inside_the_view(
    mountpoint: Path, volumes: tuple[Path, Path, Path]
) -> None:
    _, work, _ = volumes
    (work / "esc").symlink_to("/etc")
    (work / "up").symlink_to("../../../../..")
    with ServerProcess(_view(*volumes), str(mountpoint)):
        seen = client(
            """
print(json.dumps({
    "dotdot": outcome(readfile, "/data/../../../etc/hostname"),
    "dotdot sub": outcome(readfile, "/data/sub/../../../data/file"),
    "root of view": sorted(os.listdir("/data/../../../..")),
    "root link": sorted(outcome(os.listdir, "/data/root/")),
    "abs link": outcome(os.listdir, "/work/esc/"),
    "abs link file": outcome(readfile, "/work/esc/passwd"),
    "up link": sorted(outcome(os.listdir, "/work/up/")),
    "proc": outcome(os.stat, "/proc/self/root"),
}))
""",
            root=mountpoint,
        )
    view_root = ["capsule", "data", "private", "work"]
    assert seen == {
        "dotdot": "ENOENT",
        "dotdot sub": "data\n",
        "root of view": view_root,
        "root link": view_root,
        "abs link": "ENOENT",
        "abs link file": "ENOENT",
        "up link": view_root,
        "proc": "ENOENT",
    }


@needs_root
def test_a_name_swapped_with_a_symlink_never_leads_outside(
    mountpoint: Path, volumes: tuple[Path, Path, Path]
) -> None:
    """The host swaps names between real entries and symlinks to /etc while the container
    reads them: every read sees the volume's own data or fails, never /etc/passwd."""
    _, work, _ = volumes
    (work / "dir").mkdir()
    (work / "dir" / "passwd").write_bytes(b"inside\n")
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            (work / ".f").write_bytes(b"regular\n")
            os.replace(work / ".f", work / "name")
            os.symlink("/etc/passwd", work / ".l")
            os.replace(work / ".l", work / "name")
            os.rename(work / "dir", work / ".d")  # the directory away, a symlink in its place
            os.symlink("/etc", work / "dir")
            os.unlink(work / "dir")
            os.rename(work / ".d", work / "dir")
            swaps += 1

    spec = _view(*volumes, cache_timeout=0.0)
    with ServerProcess(spec, str(mountpoint)):
        swapper = threading.Thread(target=swap, daemon=True)
        swapper.start()
        try:
            seen = client(
                """
counts = {}
for _ in range(400):
    for path in ("/work/name", "/work/dir/passwd"):
        result = outcome(readfile, path)
        counts[result] = counts.get(result, 0) + 1
    follow = outcome(os.open, "/work/name", os.O_RDONLY | os.O_NOFOLLOW)
    if isinstance(follow, int):
        with os.fdopen(follow, "rb") as f:
            follow = f.read().decode()
    counts["nofollow " + follow] = counts.get("nofollow " + follow, 0) + 1
print(json.dumps(counts))
""",
                root=mountpoint,
            )
        finally:
            stop.set()
            swapper.join(5.0)
    assert not swapper.is_alive()
    assert swaps > 0
    allowed = {"regular\n", "inside\n", "ENOENT", "nofollow regular\n", "nofollow ELOOP"}
    assert set(seen) <= allowed, seen
    assert seen.get("regular\n", 0) + seen.get("inside\n", 0) > 0
    passwd = Path("/etc/passwd").read_text(encoding="utf-8")
    assert passwd not in seen


def test_hardlinks_and_renames_never_cross_mounts(
    mountpoint: Path, volumes: tuple[Path, Path, Path]
) -> None:
    data, work, private = volumes
    with ServerProcess(_view(*volumes), str(mountpoint)):
        m = mountpoint
        assert errno_of(os.link, m / "work" / "file", m / "private" / "x") == errno.EXDEV
        assert errno_of(os.link, m / "data" / "file", m / "work" / "x") == errno.EXDEV
        assert errno_of(os.link, m / "data" / "file", m / "private" / "x") == errno.EXDEV
        assert errno_of(os.rename, m / "work" / "file", m / "private" / "x") == errno.EXDEV
        assert errno_of(os.rename, m / "work" / "sub", m / "private" / "x") == errno.EXDEV
        assert errno_of(os.rename, m / "work" / "file", m / "data" / "x") == errno.EXDEV
        assert errno_of(os.rename, m / "data" / "file", m / "work" / "x") == errno.EROFS
        assert errno_of(os.rename, m / "work" / "file", m / "x") == errno.EROFS
        assert errno_of(os.rename, m / "work" / "file", m / "capsule" / "x") == errno.EROFS
        assert errno_of(os.link, m / "capsule" / "mounts", m / "work" / "x") == errno.EXDEV
        assert errno_of(os.link, m / "work" / "sub", m / "work" / "x") == errno.EPERM
        os.link(m / "work" / "file", m / "work" / "sub" / "same")  # within a mount: allowed
        os.rename(m / "work" / "sub" / "same", m / "work" / "moved")
    assert os.stat(work / "moved").st_ino == os.stat(work / "file").st_ino
    for root in volumes:
        assert (root / "file").read_bytes() == f"{root.name}\n".encode()
        assert not (root / "x").exists()
    assert sorted(os.listdir(private)) == ["file", "sub"]
    assert sorted(os.listdir(data)) == ["file", "root", "sub"]


def test_special_files_placed_by_the_host_are_never_served(
    mountpoint: Path, volumes: tuple[Path, Path, Path]
) -> None:
    _, work, _ = volumes
    os.mkfifo(work / "fifo")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    specials = ["fifo", "sock"]
    try:
        listener.bind(str(work / "sock"))
        if os.geteuid() == 0:
            os.mknod(work / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            specials.append("null")
        with ServerProcess(_view(*volumes), str(mountpoint)) as server:
            assert sorted(os.listdir(mountpoint / "work")) == ["file", "sub"]
            for name in specials:
                assert errno_of(os.stat, mountpoint / "work" / name) == errno.EACCES
                assert errno_of(os.open, mountpoint / "work" / name, os.O_RDONLY) == errno.EACCES
                refused = denial(server, operation="lookup", path=f"/work/{name}")
                assert refused.reason == "a device node, socket or FIFO is never served"
                assert (refused.mount, refused.token) == ("/work", "t-work")
            assert errno_of(os.mkfifo, mountpoint / "work" / "mine") == errno.EACCES
    finally:
        listener.close()
    assert not (work / "mine").exists()


@needs_root
def test_a_bind_mount_inside_a_volume_is_refused(
    mountpoint: Path, volumes: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, work, _ = volumes
    outside = tmp_path / "outside"  # on the same file system as the volume
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret\n")
    (work / "inner").mkdir()
    bind = ["mount", "--bind", str(outside), str(work / "inner")]
    subprocess.run(bind, check=True)
    try:
        with ServerProcess(_view(*volumes), str(mountpoint)) as server:
            assert sorted(os.listdir(mountpoint / "work")) == ["file", "sub"]
            assert errno_of(os.listdir, mountpoint / "work" / "inner") == errno.EACCES
            assert errno_of(read, mountpoint / "work" / "inner" / "secret") == errno.EACCES
            refused = denial(server, operation="lookup", path="/work/inner")
            assert refused.reason == "another file system is mounted here"
            assert errno_of(write, mountpoint / "work" / "inner" / "new", b"x") == errno.EACCES
    finally:
        subprocess.run(["umount", str(work / "inner")], check=True)  # noqa: S607 - as above
    assert sorted(os.listdir(outside)) == ["secret"]
