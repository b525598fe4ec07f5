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
    assert "find the host program's environment (HOME, API keys): refused (not there)" in out
    assert "killed by its memory limit (out of memory)" in out
    assert "plugin: 3 restarts, now quarantined" in out
    assert "nothing is left behind" in out
