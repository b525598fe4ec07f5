"""The zygote's own end: how it goes when the supervisor goes."""

from __future__ import annotations

import select
import socket
from pathlib import Path

import pytest

from capsule._environ import minimal
from capsule._spawn._client import ZygoteClient
from capsule._spawn._layout import NEUTRAL_ROOT, neutral_support
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
