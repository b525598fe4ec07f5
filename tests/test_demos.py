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
    assert result.stdout.count("[ok  ]") >= 15
    assert "plugin net_connect 127.0.0.1:8765: denied" in result.stdout
