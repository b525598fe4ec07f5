"""Problems found in manifests, and the per-file sink that records them with their lines.

Records and orders problems only: it never decides what is wrong, and never raises
for manifest content.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import final

import msgspec

from capsule._manifest._locator import KeyPath, SourceMap, format_key
from capsule.errors import ConfigError

__all__ = ["Doc", "Problem", "Severity", "problems_error", "sorted_problems"]


class Severity(enum.StrEnum):
    """How bad a problem is: errors stop an app from loading, warnings do not."""

    ERROR = "error"
    WARNING = "warning"


@final
class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with a manifest: where it is and what would be valid instead.

    ``path`` is the file as reached from the path the check was given, ``key`` the
    dotted key path inside it (``access.fs[1].mode``; empty for the whole file) and
    ``line`` the 1-based line, or None when the key does not appear in the file.
    """

    severity: Severity
    path: str
    key: str
    line: int | None
    message: str

    @property
    def location(self) -> str:
        """``FILE:LINE`` (or just ``FILE`` when the line is unknown)."""
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def __str__(self) -> str:
        key = f" [{self.key}]" if self.key else ""
        return f"{self.severity.value} {self.location}{key} {self.message}"


@final
class Doc:
    """One manifest file being checked: its shown path, its source map and the shared sink."""

    def __init__(self, path: str, source: SourceMap | None, sink: list[Problem]) -> None:
        self.path = path
        self.source = source
        self.sink = sink

    def line(self, key: KeyPath) -> int | None:
        return None if self.source is None else self.source.line(key)

    def error(self, key: KeyPath, message: str, *, line: int | None = None) -> None:
        self._add(Severity.ERROR, key, message, line)

    def warning(self, key: KeyPath, message: str, *, line: int | None = None) -> None:
        self._add(Severity.WARNING, key, message, line)

    def errors_since(self, mark: int) -> bool:
        """Whether an error about this file was recorded after ``len(sink) == mark``."""
        return any(p.severity is Severity.ERROR and p.path == self.path for p in self.sink[mark:])

    def _add(self, severity: Severity, key: KeyPath, message: str, line: int | None) -> None:
        self.sink.append(
            Problem(
                severity=severity,
                path=self.path,
                key=format_key(key),
                line=self.line(key) if line is None else line,
                message=message,
            )
        )


def sorted_problems(problems: Iterable[Problem], places: Sequence[str] = ()) -> tuple[Problem, ...]:
    """Problems by place, then by line inside each file.

    ``places`` are files or directories in the order to report them (app.toml, then
    each bundle as listed); a file goes with the first place that is it or holds it.
    Other files follow in the order they were first reported on.
    """
    found = list(problems)
    rank: dict[str, int] = {}
    for problem in found:
        if problem.path in rank:
            continue
        for index, place in enumerate(places):
            if problem.path == place or problem.path.startswith(place.rstrip("/") + "/"):
                rank[problem.path] = index
                break
        else:
            rank[problem.path] = len(places) + len(rank)
    order = sorted(range(len(found)), key=lambda i: (rank[found[i].path], found[i].line or 0, i))
    return tuple(found[i] for i in order)


def problems_error(problems: tuple[Problem, ...]) -> ConfigError | None:
    """A ConfigError about the first error (carrying all ``problems``), or None if none."""
    for problem in problems:
        if problem.severity is Severity.ERROR:
            count = sum(p.severity is Severity.ERROR for p in problems)
            more = f" (and {count - 1} more error{'s' if count > 2 else ''})" if count > 1 else ""
            return ConfigError(
                problem.message + more,
                path=problem.path,
                key=problem.key or None,
                line=problem.line,
                problems=problems,
            )
    return None
