"""What the audit-log tests share: a token id, a fixed start time, a clock the test moves,
and the lines of a log file as dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TID = "3f2a9c1b0d4e5f60718293a4b5c6d7e8"
T0 = 1_795_600_800.125  # 2026-11-25T10:00:00.125Z


class FakeClock:
    """A clock for ``AuditLog(clock=...)`` that stands still until a test sets ``now``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the JSON-lines file at ``path``, decoded."""
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]
