"""A view of a volume far larger than the server's open-file limit: 100,000 files made on
the host, then stat'ed, listed, read, created and unlinked through a real mount, while the
server's open descriptors (counted in /proc/PID/fd) stay bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from fusefs import MountKind, ServerProcess
from tests.fusefs._support import client, mount, needs_root, view, wait_until

FILES: Final = 100_000
CREATED: Final = 2_000
#: the server's descriptors of known files are capped at 4,096; a few more are its own
#: (the FUSE device, the control socket, the mount roots, Python's)
BOUND: Final = 4_096 + 200


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _content(index: int) -> bytes:
    return f"file {index}\n".encode()


def test_a_view_serves_100k_files_with_a_bounded_number_of_descriptors(
    mountpoint: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    volume = tmp_path / "volume"
    many = volume / "many"
    many.mkdir(parents=True)
    names = [f"f{index:06d}" for index in range(FILES)]
    for index, name in enumerate(names):
        fd = os.open(many / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, _content(index))
        os.close(fd)

    with ServerProcess(view(mount("/data", MountKind.RW, volume)), str(mountpoint)) as server:
        pid = server.process.pid
        most = 0
        data = mountpoint / "data" / "many"

        def sample() -> None:
            nonlocal most
            most = max(most, _descriptors(pid))

        for index, name in enumerate(names):  # a lookup of every file
            assert os.stat(data / name).st_size == len(_content(index)), name
            if index % 10_000 == 0:
                sample()
        sample()
        assert sorted(os.listdir(data)) == names
        sample()
        for index, name in enumerate(names):
            with open(data / name, "rb") as f:
                assert f.read() == _content(index), name
            if index % 10_000 == 0:
                sample()
        for index in range(CREATED):
            with open(data / f"new{index:05d}", "xb") as f:
                f.write(b"new\n")
        sample()
        for name in names:
            os.unlink(data / name)
        sample()
        assert sorted(os.listdir(data)) == [f"new{index:05d}" for index in range(CREATED)]
        for index in range(CREATED):
            assert (volume / "many" / f"new{index:05d}").read_bytes() == b"new\n"
            os.unlink(data / f"new{index:05d}")
        assert not os.listdir(many)
        assert most <= BOUND, f"the server held {most} descriptors for {FILES} files"
        # the kernel forgets unlinked files, and the server closes what it held for them
        wait_until(lambda: _descriptors(pid) < 200, what="descriptors closed after FORGET")
        (volume / "after").write_bytes(b"x")  # and the view still opens files
        assert (mountpoint / "data" / "after").read_bytes() == b"x"
    # a guard against a server stuck or gone quadratic, not a speed target (the speed of
    # views is measured by benchmarks/fusefs.py): two minutes on a quiet machine
    assert time.monotonic() - started < 600, "100k files took more than ten minutes"


_LOW_LIMIT_CLIENT = """
import os, resource, sys
from fusefs import MountKind, MountSpec, ServerProcess, ViewSpec

volume, mountpoint, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))  # the server inherits this hard limit
spec = ViewSpec(
    owner="feat",
    mounts=(MountSpec(view_path="/data", kind=MountKind.RO, backing=volume),),
    uid=os.geteuid(),
    gid=os.getegid(),
)
with ServerProcess(spec, mountpoint) as server:
    data = os.path.join(mountpoint, "data")
    for index in range(files):
        with open(os.path.join(data, f"f{index:05d}"), "rb") as f:
            assert f.read() == str(index).encode(), index
    print("served", files, "descriptors", len(os.listdir(f"/proc/{server.process.pid}/fd")))
"""


def test_a_server_that_cannot_raise_its_open_file_limit_says_so_and_still_serves(
    mountpoint: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    files = 3_000  # three times the hard limit
    for index in range(files):
        (volume / f"f{index:05d}").write_bytes(str(index).encode())
    result = subprocess.run(
        [sys.executable, "-c", _LOW_LIMIT_CLIENT, str(volume), str(mountpoint), str(files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    served, count, _, descriptors = result.stdout.split()
    assert (served, int(count)) == ("served", files)
    assert int(descriptors) <= 256 + 64, result.stdout  # a quarter of the limit, and its own
    assert "the open-file limit stays at 1024, not 16384" in result.stderr, result.stderr
    assert "keeps at most 256 descriptors of known files open" in result.stderr


@needs_root
def test_a_directory_swapped_for_a_symlink_after_its_descriptor_was_evicted_leads_nowhere(
    mountpoint: Path, tmp_path: Path
) -> None:
    """The server reopens an evicted node beneath its parent by name: when the host has
    put a symlink to /etc where the directory was, the reopen finds another file and the
    container's read fails or sees the volume's own data, never /etc/passwd."""
    volume = tmp_path / "volume"
    (volume / "dir").mkdir(parents=True)
    (volume / "dir" / "passwd").write_bytes(b"inside\n")
    (volume / "many").mkdir()
    for index in range(5_000):  # more than the server keeps open
        (volume / "many" / f"f{index:04d}").touch()
    spec = view(mount("/data", MountKind.RO, volume), cache_timeout=60.0)
    with ServerProcess(spec, str(mountpoint)) as server:
        data = mountpoint / "data"
        assert (data / "dir" / "passwd").read_bytes() == b"inside\n"
        for index in range(5_000):  # the kernel keeps dir/passwd cached; the server evicts
            os.stat(data / "many" / f"f{index:04d}")
        os.rename(volume / "dir", volume / "away")
        os.symlink("/etc", volume / "dir")
        seen = client(
            'print(json.dumps([outcome(readfile, "/data/dir/passwd") for _ in range(3)]))',
            root=mountpoint,
        )
        assert set(seen) <= {"inside\n", "ENOENT", "ESTALE"}, seen
        assert server.process.poll() is None
    assert "root:" not in "".join(seen)
