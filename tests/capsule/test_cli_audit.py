"""``capsule audit`` run as a user would (in a subprocess), on an audit log written here."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TID = "3f2a9c1b0d4e5f60718293a4b5c6d7e8"


def capsule(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capsule", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def event(**fields: Any) -> str:
    line = {"time": 1795600800.123, "ts": "2026-11-25T10:00:00.123Z", "app": "notes"}
    return json.dumps({**line, "run": "r1", "reason": "", **fields})


EVENTS = [
    event(
        event="call",
        feature="plugin",
        decision="deny",
        reason="no capability covers it",
        token=TID,
        capability="icc:call:dictionary.lookup",
    ),
    event(
        event="allow",
        feature="editor",
        decision="allow",
        token=TID,
        capability="icc:publish:notes.changed",
        count=42,
    ),
    event(event="delegate", feature="editor", decision="delegate", to="plugin", parent=TID),
    event(event="admit", feature="spell", decision="refuse", reason="expired"),
    event(event="deny-suppressed", feature="evil", decision="deny", count=7),
]


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.jsonl"
    path.write_text("".join(line + "\n" for line in EVENTS), "utf-8")
    return path


def test_text_shows_one_aligned_line_per_event(audit_file: Path) -> None:
    result = capsule("audit", str(audit_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout.splitlines()
    assert len(out) == 5
    assert out[0].split("  ")[0] == "2026-11-25T10:00:00.123Z"
    assert out[0].split() == [
        *("2026-11-25T10:00:00.123Z", "deny", "plugin", "icc:call:dictionary.lookup"),
        *("token", TID[:12], "no", "capability", "covers", "it"),
    ]
    assert out[1].endswith(f"token {TID[:12]}  x42")
    assert out[2].split()[-2:] == [f"parent={TID}", "to=plugin"]
    assert out[4].split()[1:4] == ["deny", "evil", "deny-suppressed"]
    assert out[4].endswith("  x7")
    columns = {line.index(line.split()[2]) for line in out}  # the feature column lines up
    assert len(columns) == 1


def test_feature_keeps_its_events_and_delegations_to_it(audit_file: Path) -> None:
    result = capsule("audit", str(audit_file), "--feature", "plugin", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [EVENTS[0], EVENTS[2]]


def test_denied_keeps_deny_refuse_and_suppressed(audit_file: Path) -> None:
    result = capsule("audit", str(audit_file), "--denied", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [EVENTS[0], EVENTS[3], EVENTS[4]]
    both = capsule("audit", str(audit_file), "--denied", "--feature", "spell")
    assert [line.split()[1:3] for line in both.stdout.splitlines()] == [["refuse", "spell"]]


def test_json_prints_the_lines_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    original = '{"event":"end",  "feature":"plugin","decision":"end","x":[1, 2]}'
    path.write_text(original + "\n", "utf-8")
    result = capsule("audit", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == original + "\n"


def test_a_bad_line_is_named_and_reading_goes_on(audit_file: Path) -> None:
    with audit_file.open("a", encoding="utf-8") as file:
        file.write("garbage\n" + EVENTS[1] + "\n")
    result = capsule("audit", str(audit_file), "--format", "json")
    assert result.returncode == 1
    assert result.stderr == (
        f"capsule: {audit_file}:6: not an audit event (invalid JSON: Expecting value at column 1)\n"
    )
    assert result.stdout.splitlines() == [*EVENTS, EVENTS[1]]


def test_control_characters_from_containers_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(event(event="call", feature="p", decision="deny", reason="\x1b[2J") + "\n")
    result = capsule("audit", str(path))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert result.stdout.rstrip().endswith("\\x1b[2J")


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = capsule("audit", str(missing))
    assert result.returncode == 1
    assert result.stderr.startswith("capsule: error: ")
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def _read_until(proc: subprocess.Popen[bytes], text: bytes, deadline: float) -> bytes:
    """Everything ``proc`` printed up to and including ``text``, waiting until ``deadline``."""
    assert proc.stdout is not None
    out = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while text not in out:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not printed in time; got {out!r}"
            if selector.select(remaining):
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"capsule audit ended early; got {out!r}"
                out += chunk
    return out


def test_follow_prints_appended_lines_and_ends_cleanly_on_ctrl_c(audit_file: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "capsule", "audit", str(audit_file), "--follow"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        assert b"deny-suppressed" in _read_until(proc, b"x7\n", deadline)
        with audit_file.open("a", encoding="utf-8") as file:
            file.write(event(event="end", feature="plugin", decision="end", reason="stopped"))
            file.flush()
            file.write("\n")
        assert b"stopped" in _read_until(proc, b"stopped\n", deadline)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert b"Traceback" not in stderr
    assert stderr == b""
