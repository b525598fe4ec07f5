"""The zygote's own end: how it goes when the supervisor goes, and its containers' starts."""

from __future__ import annotations

import os
import select
import signal
import socket
from pathlib import Path

import pytest
import trio

from capsule._environ import minimal
from capsule._sandbox._view import ViewPlan
from capsule._spawn._client import ZygoteClient
from capsule._spawn._layout import NEUTRAL_ROOT, neutral_support
from capsule._spawn._protocol import Rlimits, SpawnRequest
from capsule._supervisor._plan import container_uids
from capsule.errors import SandboxError


def test_a_supervisor_gone_with_reports_unread_ends_the_zygote_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Closing the link with the zygote's ready report still unread makes its next read
    fail with ECONNRESET instead of reading EOF: the zygote takes that as the close it is,
    exits 0 and prints no traceback."""
    zygote = ZygoteClient.launch(tmp_path)
    sock = zygote._sock  # the test plays a supervisor that vanishes
    readable, _, _ = select.select([sock], [], [], 30)
    assert readable, "the zygote reported nothing within 30 s"
    assert sock.recv(1 << 16, socket.MSG_PEEK)  # its ready report, left unread
    sock.close()
    process = zygote._process
    assert process.wait(timeout=30) == 0
    assert "Traceback" not in capfd.readouterr().err


def test_the_zygote_starts_with_the_minimal_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything the zygote forks inherits its environment block: it holds nothing of the
    host program's (here a variable set just before the launch), only ``MINIMAL`` (and, in a
    root of its own, where its interpreter's library lies there, a neutral path)."""
    monkeypatch.setenv("CAPSULE_PROBE_HOST_SECRET", "sk-host-only")
    zygote = ZygoteClient.launch(tmp_path)
    try:
        readable, _, _ = select.select([zygote._sock], [], [], 30)
        assert readable, "the zygote reported nothing within 30 s"
        block = Path(f"/proc/{zygote.pid}/environ").read_bytes()
    finally:
        zygote._sock.close()
        zygote._process.wait(timeout=30)
    entries = dict(entry.partition(b"=")[::2] for entry in block.split(b"\0") if entry)
    expected = minimal(zygote.layout.library_path)
    assert entries == {name.encode(): value.encode() for name, value in expected.items()}
    assert all(path.startswith(f"{NEUTRAL_ROOT}/") for path in zygote.layout.library_path)


@pytest.mark.skipif(not neutral_support()[0], reason="the zygote gets a root of its own as root")
@pytest.mark.trio
async def test_a_zygote_that_cannot_get_its_own_root_says_why(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its root is mounted on the stage directory: without one, the launcher says what failed
    and the supervisor's error says where to read it."""
    zygote = ZygoteClient.launch(tmp_path / "missing")
    try:
        with pytest.raises(SandboxError, match=r"exit status 71\) \(in a root of its own"):
            await zygote.wait_started()
    finally:
        await zygote.aclose()
    err = capfd.readouterr().err
    assert "could not give the zygote a root of its own" in err, err
    assert str(tmp_path / "missing") in err, err


def _request(name: str, uid: int) -> SpawnRequest:
    """A container with nothing but the runtime in its root, no cgroup."""
    return SpawnRequest(
        name=name,
        uid=uid,
        gid=uid,
        view=ViewPlan(binds=()),
        rlimits=Rlimits(nofile=256, fsize=64 << 20, data=1 << 30, nproc=None),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="maps container uids as root")
@pytest.mark.trio
async def test_a_container_waiting_for_its_view_holds_up_no_other_start(
    tmp_path: Path,
) -> None:
    """A container whose root's sources are held back (its view is not mounted yet) waits
    in its cgroup, before its namespaces: the zygote meanwhile starts another container,
    and closing the held-back request ends the first with a start failure."""
    stage = tmp_path / "stage"
    stage.mkdir()
    zygote = ZygoteClient.launch(stage)
    uids = container_uids(os.getpid())
    try:
        await zygote.wait_started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(zygote.serve)
            held = zygote.prepare(_request("held", uids[0]))
            held_channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            outcome: list[BaseException] = []
            failed = trio.Event()

            async def start_held() -> None:
                try:
                    await zygote.spawn(held, theirs)
                except SandboxError as exc:
                    outcome.append(exc)
                    failed.set()

            nursery.start_soon(start_held)
            other = zygote.prepare(_request("other", uids[1]))
            other.send()
            other_channel, theirs_other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with trio.fail_after(30):
                started = await zygote.spawn(other, theirs_other)
            assert not outcome, "the held container failed before its request was closed"
            signal.pidfd_send_signal(started.pidfd, signal.SIGKILL)
            os.close(started.pidfd)
            with trio.fail_after(30):
                await zygote.wait_exit(started.pid)
            held.withdraw()
            with trio.fail_after(30):
                await failed.wait()
            assert "did not reach its new namespaces" in str(outcome[0])
            held_channel.close()
            other_channel.close()
            nursery.cancel_scope.cancel()
    finally:
        await zygote.aclose()
