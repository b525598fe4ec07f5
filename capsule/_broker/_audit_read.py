"""Reading an audit log back, once or following it as it grows (``capsule audit``).

Must not write or judge: it parses lines into events and reports the lines that are not
JSON objects as problems, then reads on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import sleep
from typing import Any, final

__all__ = ["AuditEvent", "AuditProblem", "read_events"]


@final
@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of an audit log: its fields, its line number and its text as written."""

    data: Mapping[str, Any]
    line: int
    raw: str

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@final
@dataclass(frozen=True, slots=True)
class AuditProblem:
    """A line that is not a JSON object; reading goes on after it."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _parse(path: Path, number: int, raw: bytes) -> AuditEvent | AuditProblem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return AuditProblem(path, number, f"not UTF-8 at byte {exc.start + 1}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return AuditProblem(path, number, f"invalid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return AuditProblem(path, number, "invalid JSON: nested too deeply")
    if not isinstance(data, dict):
        return AuditProblem(path, number, f"a JSON {type(data).__name__}, not an object")
    return AuditEvent(data, number, text)


def read_events(
    path: Path, *, follow: bool = False, poll: float = 0.2
) -> Iterator[AuditEvent | AuditProblem]:
    """The events of ``path`` in order; blank lines are skipped.

    With ``follow`` it waits for lines appended later (checking every ``poll`` seconds),
    a last line without its newline included, goes on in the new file when the log is
    rotated (line numbers count on), and never ends by itself.
    """
    number = 0
    partial = b""
    file = path.open("rb")
    try:
        while True:
            chunk = file.readline()
            if chunk:
                partial += chunk
                if not partial.endswith(b"\n"):
                    continue  # at the end of the file: waits for the rest below
            elif follow:
                if not partial and _rotated(path, file.fileno()):
                    file.close()  # read to its end: go on with the new file
                    file = path.open("rb")
                    continue
                sleep(poll)
                continue
            elif not partial:
                return
            raw, partial = partial, b""
            number += 1
            if raw.strip():
                yield _parse(path, number, raw.rstrip(b"\r\n"))
    finally:
        file.close()


def _rotated(path: Path, fd: int) -> bool:
    """Whether ``path`` is now another file than the one open as ``fd`` (the log rotated)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False  # between the rename and the new file
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)
