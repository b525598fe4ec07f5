"""Every runnable demo runs to the end and reports that the app behaved as designed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_notes_demo_behaves_as_designed() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "run_demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert "all steps behaved as designed" in result.stdout
    assert result.stdout.count("[ok  ]") >= 25
    out = result.stdout
    assert "POST /exports/ideas.md, POST /exports/shopping.md" in out  # the webhook got both
    assert "it tries to connect to the exporter's webhook: refused (denied)" in out
    # the exporter runs on demand: woken by the first export, gone when idle, woken again
    assert "the exporter had no container until the editor's first export started it" in out
    assert "it is drained and gone: state stopped (on-demand)" in out
    assert (
        'with the spelling counts it kept (export_state): <!-- exported by capsule notes: {"words"'
        in out
    )
    assert "find the host program's environment (HOME, API keys): refused (not there)" in out
    assert "killed by its memory limit (out of memory)" in out
    assert "plugin: 3 restarts, now quarantined" in out
    # spellcheck 1.3.0 takes over with 1.2.0's cache; the broken 1.4.0 is rolled back
    assert "its cache came across (export_state of 1.2.0, import_state of 1.3.0)" in out
    assert "audit: update-rollback spellcheck: 2 crash(es) during probation" in out
    assert "cold start: False" in out
    assert "the version history says what ran: 1.2.0 started, 1.3.0 updated, " in out
    # word-count, installed while the app runs, then removed
    assert "capability diff: + fs:read:/notes/" in out
    assert "capsule.service.up (installed), capsule.service.down (removed)" in out
    assert "nothing of it is left" in out
    assert "nothing is left behind" in out
