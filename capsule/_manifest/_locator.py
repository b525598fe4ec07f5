"""Line numbers for the keys of a TOML document, which tomllib does not report.

Only locates: it never decides whether a value is valid, and it is only given text
that tomllib has already accepted (on anything else it keeps what it found so far).

A key path is a tuple of table keys (``str``) and array indexes (``int``):
``("access", "fs", 1, "mode")`` is written ``access.fs[1].mode``. The scanner knows
``[table]``, ``[table.sub]`` and ``[[array]]`` headers, dotted and quoted keys, inline
tables, nested arrays and all four string forms. An array element maps to the line
where the element starts: its own line when it has one, else the key's line.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from typing import Final, TypeAlias, final

__all__ = ["KeyPath", "SourceMap", "format_key"]

KeyPath: TypeAlias = tuple[str | int, ...]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END: Final = frozenset(",]}#\r\n")


def format_key(path: KeyPath) -> str:
    """``("access", "fs", 1, "mode")`` -> ``access.fs[1].mode``; odd keys are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        shown = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        text += f".{shown}" if text else shown
    return text


@final
class SourceMap:
    """Where each key of one TOML text is first defined (1-based line numbers)."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        scanner = _Scanner(text, self._lines)
        # On text that is not valid TOML after all (or nested beyond Python's recursion
        # limit), keep the lines found so far.
        with contextlib.suppress(_StopScanningError, RecursionError):
            scanner.document()

    def exact(self, path: KeyPath) -> int | None:
        """The line of ``path`` itself, or None when the text does not define it."""
        return self._lines.get(path)

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its nearest defined parent (a missing key's table)."""
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return None

    def keys(self) -> tuple[KeyPath, ...]:
        return tuple(self._lines)


class _StopScanningError(Exception):
    """The text is not the TOML the scanner expected."""


class _Scanner:
    """A structure-only TOML reader: records key lines, skips every value."""

    def __init__(self, text: str, out: dict[KeyPath, int]) -> None:
        self.text = text
        self.pos = 0
        self.lineno = 1
        self.out = out
        #: array-of-tables path -> index of its last element so far
        self.last_index: dict[KeyPath, int] = {}

    # -- primitives --------------------------------------------------------------

    def peek(self, count: int = 1) -> str:
        return self.text[self.pos : self.pos + count]

    def advance(self, count: int = 1) -> None:
        self.lineno += self.text.count("\n", self.pos, self.pos + count)
        self.pos += count

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _StopScanningError
        self.advance(len(token))

    def skip_blank(self, *, newlines: bool) -> None:
        """Skip spaces, tabs and comments, and line breaks too when ``newlines``."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t":
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif newlines and char in "\r\n":
                self.advance()
            else:
                return

    def record(self, path: KeyPath, line: int) -> None:
        self.out.setdefault(path, line)

    # -- structure ---------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self.lineno
            if self.peek(2) == "[[":
                self.advance(2)
                parts = self.key()
                self.expect("]]")
                base = (*self.resolve(parts[:-1]), parts[-1])
                index = self.last_index.get(base, -1) + 1
                self.last_index[base] = index
                table = (*base, index)
                self.record_with_parents(table, line)
            elif self.peek() == "[":
                self.advance()
                parts = self.key()
                self.expect("]")
                table = self.resolve(parts)
                self.record_with_parents(table, line)
            else:
                self.keyval(table)
            self.skip_blank(newlines=False)
            if self.pos < len(self.text) and self.peek() not in "\r\n":
                raise _StopScanningError

    def resolve(self, parts: tuple[str, ...]) -> KeyPath:
        """A header's key path, stepping into the last element of any array of tables."""
        path: KeyPath = ()
        for part in parts:
            path = (*path, part)
            if path in self.last_index:
                path = (*path, self.last_index[path])
        return path

    def record_with_parents(self, path: KeyPath, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.record(path[:end], line)

    def keyval(self, table: KeyPath) -> None:
        line = self.lineno
        path = (*table, *self.key())
        for end in range(len(table) + 1, len(path) + 1):
            self.record(path[:end], line)
        self.expect("=")
        self.skip_blank(newlines=False)
        self.value(path)

    def key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char == '"':
                start = self.pos
                self.basic_string()
                parts.append(_decode_basic(self.text[start : self.pos]))
            elif char == "'":
                start = self.pos
                self.literal_string()
                parts.append(self.text[start + 1 : self.pos - 1])
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise _StopScanningError
                parts.append(match.group())
                self.advance(match.end() - self.pos)
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.advance()

    def value(self, path: KeyPath) -> None:
        if self.peek(3) in ('"""', "'''"):
            self.multiline_string(self.peek(3))
        elif self.peek() == '"':
            self.basic_string()
        elif self.peek() == "'":
            self.literal_string()
        elif self.peek() == "[":
            self.array(path)
        elif self.peek() == "{":
            self.inline_table(path)
        else:
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1
            if self.pos == start:
                raise _StopScanningError

    def array(self, path: KeyPath) -> None:
        self.advance()
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.advance()
                return
            if not self.peek():
                raise _StopScanningError
            element = (*path, index)
            self.record(element, self.lineno)
            self.value(element)
            index += 1
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.advance()
            elif self.peek() != "]":
                raise _StopScanningError

    def inline_table(self, path: KeyPath) -> None:
        self.advance()
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "}":
                self.advance()
                return
            self.keyval(path)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.advance()
            elif self.peek() != "}":
                raise _StopScanningError

    # -- strings -----------------------------------------------------------------

    def basic_string(self) -> None:
        self.advance()
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return
            elif char == "\n":
                break
            else:
                self.pos += 1
        raise _StopScanningError

    def literal_string(self) -> None:
        end = self.text.find("'", self.pos + 1)
        if end < 0 or "\n" in self.text[self.pos : end]:
            raise _StopScanningError
        self.pos = end + 1

    def multiline_string(self, quotes: str) -> None:
        self.advance(3)
        while self.pos < len(self.text):
            if quotes == '"""' and self.peek() == "\\":
                self.advance(2)
            elif self.peek(3) == quotes:
                self.advance(3)
                # up to two more quote characters belong to the content
                for _ in range(2):
                    if self.peek() == quotes[0]:
                        self.advance()
                return
            else:
                self.advance()
        raise _StopScanningError


def _decode_basic(token: str) -> str:
    """The value of a quoted key, escapes resolved by tomllib itself."""
    try:
        value = tomllib.loads(f"k = {token}")["k"]
    except tomllib.TOMLDecodeError:
        raise _StopScanningError from None
    if not isinstance(value, str):
        raise _StopScanningError
    return value
