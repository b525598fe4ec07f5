"""A server that dies or hangs (THREATS.md item 27): synced data survives a SIGKILL, the
mount then fails at once instead of hanging, a hung connection can be aborted, and one
view's stall never slows another view. Every access that could hang runs in a thread or a
process of its own, with a deadline."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from fusefs import MountKind, ServerProcess
from tests.fusefs._support import (
    BlockedClient,
    client,
    client_command,
    mount,
    needs_root,
    read,
    view,
    wait_until,
)

#: what a request fails with once the connection is gone or aborted
_GONE = {"ENOTCONN", "ECONNABORTED"}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@contextmanager
def _stopped(server: ServerProcess) -> Iterator[None]:
    """The server SIGSTOPped; killed (never resumed) when the block ends."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        server.kill()


def test_synced_data_survives_a_killed_server_and_the_mount_fails_fast(
    mountpoint: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    synced = os.urandom(256 * 1024)
    with ServerProcess(view(mount("/w", MountKind.RW, volume)), str(mountpoint)) as server:
        fd = os.open(mountpoint / "w" / "synced", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, synced)
            os.fsync(fd)
        finally:
            os.close(fd)
        failure: list[int | None] = []

        def keep_writing() -> None:
            fd = os.open(mountpoint / "w" / "unsynced", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline:
                    os.write(fd, b"u" * 4096)
            except OSError as exc:
                failure.append(exc.errno)
            finally:
                with suppress(OSError):  # close() reports the lost connection too
                    os.close(fd)

        writer = threading.Thread(target=keep_writing, daemon=True)
        writer.start()
        wait_until(lambda: _size(volume / "unsynced") > 64 * 1024, what="unsynced writes")
        server.kill()
        writer.join(5.0)
        assert not writer.is_alive(), "a write hung on the dead server"
        assert failure
        assert failure[0] is not None
        assert errno.errorcode[failure[0]] in _GONE
        assert (volume / "synced").read_bytes() == synced
        code = f"""
print(json.dumps([outcome(os.stat, {str(mountpoint / "w" / "synced")!r}),
                  outcome(os.listdir, {str(mountpoint)!r})]))
"""
        assert client(code, timeout=10.0) == ["ENOTCONN", "ENOTCONN"]
    assert (volume / "synced").read_bytes() == synced
    assert (volume / "unsynced").stat().st_size % 4096 == 0


@needs_root
def test_a_hung_server_can_be_aborted_and_its_clients_return(
    mountpoint: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "file").write_bytes(b"data")
    spec = view(mount("/data", MountKind.RO, volume), cache_timeout=0.0)
    with ServerProcess(spec, str(mountpoint)) as server:
        assert server.probe(5.0)
        assert server.mounted is not None
        assert server.mounted.connection is not None
        with _stopped(server):
            blocked = BlockedClient(
                f"print(json.dumps(outcome(os.stat, {str(mountpoint / 'data' / 'file')!r})))"
            )
            try:
                assert not server.probe(0.5)
                assert blocked.running()  # stuck in the kernel waiting for the server
                started = time.monotonic()
                assert server.abort()
                assert blocked.result(timeout=5.0) in _GONE
                assert time.monotonic() - started < 5.0
            finally:
                blocked.close()
            later = client(
                f"print(json.dumps(outcome(os.listdir, {str(mountpoint)!r})))", timeout=10.0
            )
            assert later in _GONE


@needs_root
@pytest.mark.parametrize("stall", ["stopped", "hammered"])
def test_one_stalled_view_does_not_slow_another(
    mountpoint: Path, tmp_path: Path, stall: str
) -> None:
    volume = tmp_path / "volume"
    (volume / "dir").mkdir(parents=True)
    for i in range(50):
        (volume / "dir" / f"f{i}").write_bytes(b"x" * 100)
    other = tmp_path / "other"
    other.mkdir()
    # no caching: every access of the measured view is a request to its server
    slow = view(mount("/v", MountKind.RO, volume), owner="slow", cache_timeout=0.0)
    fast = view(mount("/v", MountKind.RO, volume), owner="fast", cache_timeout=0.0)
    with ServerProcess(slow, str(mountpoint)) as a, ServerProcess(fast, str(other)):
        load: list[subprocess.Popen[bytes]] = []
        blocked: BlockedClient | None = None
        try:
            if stall == "stopped":
                os.kill(a.process.pid, signal.SIGSTOP)
                blocked = BlockedClient(
                    f"print(json.dumps(outcome(os.listdir, {str(mountpoint / 'v' / 'dir')!r})))"
                )
            else:
                hammer = f"""
while True:
    for name in os.listdir({str(mountpoint / "v" / "dir")!r}):
        os.stat({str(mountpoint / "v" / "dir")!r} + "/" + name)
"""
                load = [
                    subprocess.Popen(client_command(hammer), stdin=subprocess.DEVNULL)
                    for _ in range(4)
                ]
                wait_until(lambda: a.allowed().get("/v getattr", 0) > 1000, what="load on A")
            latencies = []
            for i in range(200):
                started = time.monotonic()
                assert read(other / "v" / "dir" / f"f{i % 50}") == b"x" * 100
                latencies.append(time.monotonic() - started)
            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99) - 1]
            assert p99 < 0.5, f"p99 {p99:.3f} s while the other view is {stall}"
            if blocked is not None:
                assert blocked.running()
        finally:
            for process in load:
                process.kill()
                process.wait()
            if stall == "stopped":
                a.kill()  # never resumed: killing it releases the blocked client
            if blocked is not None:
                assert blocked.result(timeout=5.0) in _GONE
                blocked.close()
