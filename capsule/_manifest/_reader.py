"""Reading one TOML manifest: syntax errors with lines, then typed access to its tables.

Checks types, names and units of single values and reports them; it must not know
what any particular manifest means, and it never raises for manifest content.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, TypeVar, final

from capsule._manifest._locator import KeyPath, SourceMap, format_key
from capsule._manifest._problems import Doc, Problem
from capsule.errors import ConfigError

__all__ = ["MAX_MANIFEST_BYTES", "Table", "describe", "read_toml", "suggest"]

T = TypeVar("T")

#: manifests are small; anything bigger is refused before parsing.
MAX_MANIFEST_BYTES: Final = 1 << 20

_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TYPE_NAMES: Final[dict[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "table",
}


def describe(value: object) -> str:
    """``integer 5``, ``string "x"``, ``table``: how a found value is named in messages."""
    name = _TYPE_NAMES.get(type(value), "date-time")
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{name} {shown}"


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` when a close choice exists, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f' (did you mean "{close[0]}"?)' if close else ""


def read_toml(file: Path, shown: str, sink: list[Problem]) -> tuple[Table, Doc] | None:
    """Parse ``file``; on any failure record one problem (with its line) and return None."""
    doc = Doc(shown, None, sink)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        doc.error((), f"cannot read the file: {exc.strerror or exc}")
        return None
    if len(raw) > MAX_MANIFEST_BYTES:
        doc.error((), f"file is larger than {MAX_MANIFEST_BYTES} bytes; a manifest is a few KiB")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        doc.error(
            (), "not UTF-8 text: TOML files must be UTF-8", line=raw[: exc.start].count(b"\n") + 1
        )
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line = None
        if position is not None:
            line = int(position.group(1))
            message = f"{message[: position.start()]} (column {position.group(2)})"
        elif "end of document" in message:
            line = text.count("\n") + 1
        if message.startswith("Illegal character '\\n'"):
            message += "; is a string missing its closing quote?"
        doc.error((), f"TOML syntax error: {message}", line=line)
        return None
    except RecursionError:
        doc.error((), "values are nested too deeply to read")
        return None
    doc.source = SourceMap(text)
    return Table(doc, (), data), doc


@final
class Table:
    """One TOML table of a manifest, with accessors that report bad values and return None."""

    def __init__(self, doc: Doc, key: KeyPath, data: Mapping[str, object]) -> None:
        self.doc = doc
        self.key = key
        self.data = data

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def allow(self, *names: str, refused: tuple[str, ...] = ()) -> None:
        """Report every key that is not one of ``names``; keys in ``refused`` are left to
        the caller, which reports them with a message of their own."""
        for name, value in self.data.items():
            if name in names or name in refused:
                continue
            valid = ", ".join(names)
            if not self.key and isinstance(value, dict):
                what = f"unknown table [{format_key((name,))}]"
                listing = f"valid tables: {valid}"
            else:
                where = f" in [{format_key(self.key)}]" if self.key else ""
                what = f'unknown key "{name}"{where}'
                listing = f"valid keys: {valid}"
            self.doc.error((*self.key, name), f"{what}{suggest(name, names)}; {listing}")

    def table(self, name: str, *, required: bool = False) -> Table | None:
        value = self.data.get(name)
        key = (*self.key, name)
        if value is None:
            if required:
                self.doc.error(key, f"missing required table [{format_key(key)}]")
            return None
        if not isinstance(value, dict):
            self.doc.error(key, f"[{format_key(key)}] must be a table, found {describe(value)}")
            return None
        return Table(self.doc, key, value)

    def tables(self) -> list[tuple[str, Table | None]]:
        """Every entry of this table that must itself be a table (``[policy.X]``)."""
        return [(name, self.table(name)) for name in self.data]

    def missing(self, name: str, example: str) -> None:
        key = (*self.key, name)
        self.doc.error(key, f"missing required key {format_key(key)}, e.g. {example}")

    def string(
        self,
        name: str,
        *,
        required: str | None = None,
        check: Callable[[str], str | None] | None = None,
    ) -> str | None:
        """A string value; ``required`` is an example used when it is missing.

        ``check`` returns an error message (what is wrong and what is valid) or None.
        """
        if name not in self.data:
            if required is not None:
                self.missing(name, required)
            return None
        return self.check_string((*self.key, name), self.data[name], check)

    def check_string(
        self, key: KeyPath, value: object, check: Callable[[str], str | None] | None
    ) -> str | None:
        if not isinstance(value, str):
            self.doc.error(key, f"expected a string, found {describe(value)}")
            return None
        problem = None if check is None else check(value)
        if problem is not None:
            self.doc.error(key, problem)
            return None
        return value

    def array(self, name: str) -> list[tuple[KeyPath, object]]:
        """The elements of an array value with their key paths (empty if absent or wrong)."""
        if name not in self.data:
            return []
        key = (*self.key, name)
        value = self.data[name]
        if not isinstance(value, list):
            self.doc.error(key, f"expected an array, found {describe(value)}")
            return []
        return [((*key, index), item) for index, item in enumerate(value)]

    def strings(
        self, name: str, check: Callable[[str], str | None] | None = None
    ) -> list[tuple[KeyPath, str]]:
        """The valid strings of an array of strings; a repeated entry is a warning."""
        found: list[tuple[KeyPath, str]] = []
        seen: dict[str, KeyPath] = {}
        for key, item in self.array(name):
            value = self.check_string(key, item, check)
            if value is None:
                continue
            if value in seen:
                self.doc.warning(
                    key, f'"{value}" is listed twice (also at {format_key(seen[value])})'
                )
                continue
            seen[value] = key
            found.append((key, value))
        return found

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        if name not in self.data:
            return None
        key = (*self.key, name)
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int):
            self.doc.error(
                key, f"expected an integer from {minimum} to {maximum}, found {describe(value)}"
            )
            return None
        if not minimum <= value <= maximum:
            self.doc.error(key, f"must be from {minimum} to {maximum}, found {value}")
            return None
        return value

    def boolean(self, name: str) -> bool | None:
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, bool):
            hint = ""
            if isinstance(value, str) and value.lower() in ("true", "false"):
                hint = f" (write it without quotes: {name} = {value.lower()})"
            self.doc.error(
                (*self.key, name), f"expected true or false, found {describe(value)}{hint}"
            )
            return None
        return value

    def number(self, name: str, *, above: float, maximum: float) -> float | None:
        if name not in self.data:
            return None
        key = (*self.key, name)
        value = self.data[name]
        valid = f"a number more than {above} and at most {maximum}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.doc.error(key, f"expected {valid}, found {describe(value)}")
            return None
        if not above < value <= maximum:
            self.doc.error(key, f"must be {valid}, found {value}")
            return None
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        def check(value: str) -> str | None:
            if value in choices:
                return None
            valid = ", ".join(f'"{c}"' for c in choices)
            return f'"{value}" is not one of {valid}{suggest(value, choices)}'

        return self.string(name, check=check)

    def converted(self, name: str, convert: Callable[[object], T]) -> T | None:
        """A value passed through a units parser that raises ConfigError."""
        if name not in self.data:
            return None
        try:
            return convert(self.data[name])
        except ConfigError as exc:
            self.doc.error((*self.key, name), exc.message)
            return None
