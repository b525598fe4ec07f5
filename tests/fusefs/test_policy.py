"""Grants at run time (THREATS.md item 24 for files): revocation while a file is open,
expiry, callers other than the view's container, and the counts of allowed operations."""

# Token ids in these tests are names that audit lines carry, not secrets.
# ruff: noqa: S105, S106

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from fusefs import MountKind, Revoked, ServerProcess
from fusefs._policy import EXPIRY_LEAD
from tests.fusefs._support import (
    client,
    denial,
    errno_of,
    mount,
    needs_root,
    read,
    view,
    wait_until,
    write,
)


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Path, Path]:
    data, work = tmp_path / "data", tmp_path / "work"
    for root in (data, work):
        root.mkdir()
        (root / "file").write_bytes(b"x" * 10000)
    return data, work


def test_revoking_a_token_closes_its_mount_even_for_open_files(
    mountpoint: Path, volumes: tuple[Path, Path]
) -> None:
    data, work = volumes
    spec = view(
        mount("/data", MountKind.RO, data, token="t-data", capability="fs:read:/vol/"),
        mount("/work", MountKind.RW, work, token="t-work"),
    )
    with ServerProcess(spec, str(mountpoint)) as server:
        fd = os.open(mountpoint / "data" / "file", os.O_RDONLY)
        wfd = os.open(mountpoint / "work" / "file", os.O_RDWR)
        try:
            assert os.pread(fd, 100, 0) == b"x" * 100
            revoked = server.revoke("t-data")
            assert revoked == Revoked(
                tokens=("t-data",), mounts=("/data",), reason="revoked", seq=revoked.seq
            )
            assert errno_of(os.pread, fd, 100, 0) == errno.EACCES  # the page cache was dropped
            assert errno_of(os.pread, fd, 100, 5000) == errno.EACCES
            assert errno_of(os.stat, mountpoint / "data" / "file") == errno.EACCES
            assert errno_of(os.listdir, mountpoint / "data") == errno.EACCES
            assert errno_of(os.open, mountpoint / "data" / "file", os.O_RDONLY) == errno.EACCES
            # the kernel revalidates the attributes first: the read is refused at getattr
            refused = denial(server, path="/data/file")
            assert refused.operation in {"read", "getattr"}
            assert refused.reason == "token revoked"
            assert refused.token == "t-data"
            assert refused.capability == "fs:read:/vol/"
            assert denial(server, operation="getattr", path="/data/file").token == "t-data"
            # the other mount, and its open file, still work
            os.pwrite(wfd, b"still", 0)
            assert read(mountpoint / "work" / "file")[:5] == b"still"
            write(mountpoint / "work" / "new", b"new")
            lines = read(mountpoint / "capsule" / "mounts").decode().splitlines()
            assert lines[0].startswith("/data ro ro revoked ")
            assert lines[1].startswith("/work rw rw open ")
        finally:
            os.close(fd)
            os.close(wfd)
    assert (work / "new").read_bytes() == b"new"


def test_revoking_tokens_that_close_nothing_answers_with_no_mounts(
    mountpoint: Path, volumes: tuple[Path, Path]
) -> None:
    data, _ = volumes
    spec = view(mount("/data", MountKind.RO, data, token="t-data"))
    with ServerProcess(spec, str(mountpoint), timeout=5.0) as server:
        started = time.monotonic()
        unknown = server.revoke("t-unknown")
        assert unknown == Revoked(tokens=("t-unknown",), mounts=(), reason="revoked", seq=1)
        assert server.revoke("t-data").mounts == ("/data",)
        assert server.revoke("t-data").mounts == ()  # closed already
        assert time.monotonic() - started < 2.5  # answered, not timed out
        assert errno_of(os.stat, mountpoint / "data" / "file") == errno.EACCES


def test_revocation_stops_writes_through_open_files(
    mountpoint: Path, volumes: tuple[Path, Path]
) -> None:
    _, work = volumes
    spec = view(mount("/work", MountKind.RW, work, token="t-work"))
    with ServerProcess(spec, str(mountpoint)) as server:
        fd = os.open(mountpoint / "work" / "file", os.O_WRONLY)
        try:
            os.pwrite(fd, b"before", 0)
            server.revoke("t-work", reason="feature stopped")
            assert errno_of(os.pwrite, fd, b"after!", 0) == errno.EACCES
            refused = denial(server, operation="write", path="/work/file")
            assert refused.reason == "token feature stopped"
            assert refused.token == "t-work"
        finally:
            os.close(fd)
        assert errno_of(os.unlink, mountpoint / "work" / "file") == errno.EACCES
    assert (work / "file").read_bytes()[:6] == b"before"


def test_an_expired_grant_stops_working_on_its_own(
    mountpoint: Path, volumes: tuple[Path, Path]
) -> None:
    data, work = volumes
    expires = time.time() + 1.0 + EXPIRY_LEAD
    spec = view(
        mount("/data", MountKind.RO, data, token="t-short", expires=expires),
        mount("/work", MountKind.RW, work, token="t-long", expires=time.time() + 3600),
    )
    with ServerProcess(spec, str(mountpoint)) as server:
        fd = os.open(mountpoint / "data" / "file", os.O_RDONLY)
        try:
            assert os.pread(fd, 10, 0) == b"x" * 10
            revoked = server.wait_for(Revoked, timeout=5.0)
            # closed and its caches dropped before the token's expiry (a tenth of this short
            # grant's lifetime before it), not after it
            assert expires - EXPIRY_LEAD <= time.time() < expires
            assert revoked == Revoked(tokens=("t-short",), mounts=("/data",), reason="expired")
            wait_until(lambda: errno_of(os.stat, mountpoint / "data" / "file") == errno.EACCES)
            assert errno_of(os.pread, fd, 10, 0) == errno.EACCES
        finally:
            os.close(fd)
        assert denial(server, operation="getattr", path="/data/file").reason == "token expired"
        assert read(mountpoint / "work" / "file") == b"x" * 10000
        assert "/data ro ro expired " in read(mountpoint / "capsule" / "mounts").decode()


def test_no_cached_operation_outlives_the_expiry_of_a_grant(
    tmp_path: Path, mountpoint: Path
) -> None:
    """With 20,000 files known to the kernel, threads read an open file (page cache),
    fstat it and stat known names as the token expires: not one operation started at or
    after the expiry succeeds (the mount closed EXPIRY_LEAD before, caches dropped)."""
    data = tmp_path / "big"
    for d in range(20):
        (data / f"d{d}").mkdir(parents=True)
        for f in range(1000):
            (data / f"d{d}" / f"f{f}").write_bytes(b"x" * 4096)
    expires = time.time() + 10 * EXPIRY_LEAD  # long enough to close EXPIRY_LEAD early
    spec = view(mount("/big", MountKind.RO, data, token="t-big", expires=expires))
    with ServerProcess(spec, str(mountpoint)) as server:
        big = mountpoint / "big"
        for d in range(20):
            assert len(os.listdir(big / f"d{d}")) == 1000  # the kernel learns every file
        fd = os.open(big / "d0" / "f0", os.O_RDONLY)
        names = [big / f"d{d}" / f"f{f}" for d in range(1, 20) for f in range(0, 1000, 100)]
        operations = {
            "read": lambda: os.pread(fd, 4096, 0),
            "fstat": lambda: os.fstat(fd),
            "stat": lambda: [os.stat(name) for name in names[:20]],
        }
        stop = threading.Event()
        seen = {name: {"ok_after": 0, "ok_before": 0, "failed_after": 0} for name in operations}

        def hammer(name: str) -> None:
            while not stop.is_set():
                started = time.time()  # the clock expiry is measured in
                outcome = "ok" if errno_of(operations[name]) is None else "failed"
                when = "after" if started >= expires else "before"
                if outcome == "ok" or when == "after":
                    seen[name][f"{outcome}_{when}"] += 1

        threads = [threading.Thread(target=hammer, args=(name,)) for name in operations]
        try:
            for thread in threads:
                thread.start()
            server.wait_for(Revoked, timeout=15.0)
            while time.time() < expires + 0.3:
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            os.close(fd)
    assert {name: kind["ok_after"] for name, kind in seen.items()} == dict.fromkeys(
        operations, 0
    ), seen
    for name, kind in seen.items():
        assert kind["ok_before"] > 0, (name, seen)
        assert kind["failed_after"] > 0, (name, seen)


def test_a_grant_that_expired_before_the_start_never_works(
    mountpoint: Path, volumes: tuple[Path, Path]
) -> None:
    data, _ = volumes
    spec = view(mount("/data", MountKind.RO, data, token="t-old", expires=time.time() - 1))
    with ServerProcess(spec, str(mountpoint)) as server:
        assert errno_of(read, mountpoint / "data" / "file") == errno.EACCES
        assert denial(server, mount="/data").reason == "token expired"


@needs_root
def test_only_the_views_container_may_call(mountpoint: Path, volumes: tuple[Path, Path]) -> None:
    data, work = volumes
    spec = view(
        mount("/data", MountKind.RO, data, token="t-data"),
        mount("/work", MountKind.RW, work),
        uid=54321,
        gid=54321,
        # the kernel answers a stat from its cache without asking the server, for any
        # uid: without caching every request of the other uid reaches the caller check
        cache_timeout=0.0,
    )
    with ServerProcess(spec, str(mountpoint)) as server:
        code = """
print(json.dumps([
    outcome(os.listdir, "/"),
    outcome(readfile, "/data/file"),
    outcome(lambda: readfile("/capsule/mounts").splitlines()[0]),
    outcome(os.stat, "/work/file") == "ok",
]))
"""
        assert client(code, root=mountpoint, uid=54321) == [
            ["capsule", "data", "work"],
            "x" * 10000,
            "/data ro ro open bytes=0/- inodes=0/-",
            True,
        ]
        assert client(code, root=mountpoint, uid=54322) == ["EACCES", "EACCES", "EACCES", False]
        refused = denial(server, uid=54322)
        assert refused.reason == "uid 54322 is not this view's container"
    assert (work / "file").read_bytes() == b"x" * 10000


def test_allowed_operations_are_counted_and_reported(
    mountpoint: Path, volumes: tuple[Path, Path]
) -> None:
    data, work = volumes
    spec = view(mount("/data", MountKind.RO, data), mount("/work", MountKind.RW, work))
    with ServerProcess(spec, str(mountpoint)) as server:
        assert read(mountpoint / "data" / "file") == b"x" * 10000
        write(mountpoint / "work" / "new", b"abc")
        os.listdir(mountpoint / "work")
        wanted = {"/data read", "/work write", "/work create", "/work readdir"}

        def reported() -> dict[str, int] | None:
            counts = server.allowed()
            return counts if wanted <= set(counts) else None

        counts = wait_until(reported, what=f"Allowed counts of {wanted}")
        assert counts["/data read"] >= 1
        assert counts["/data open"] == 1
        assert counts["/work create"] == 1
        assert counts["/work write"] == 1
        assert not any(key.startswith("/capsule") for key in counts)
