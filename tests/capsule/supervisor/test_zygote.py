"""The zygote's own end: how it goes when the supervisor goes."""

from __future__ import annotations

import select
import socket
from pathlib import Path

import pytest

from capsule._spawn._client import ZygoteClient


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
