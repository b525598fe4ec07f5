"""The plugins an app has installed, kept in ``<state_dir>/plugins.json`` across its runs.

Reads and writes that one file (crash-safe: a temporary file, fsync, rename, fsync of the
directory) and nothing else: it starts no plugin and checks no policy. One supervisor runs
an app's state directory at a time (its run directory and cgroups are per process; two
supervisors of one app would share private storage as well), so there is no file lock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, final

import msgspec

from capsule.errors import ConfigError

__all__ = ["PLUGINS_FILE", "PluginRecord", "PluginStore"]

PLUGINS_FILE: Final = "plugins.json"
_FORMAT: Final = 1


@final
class PluginRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One installed plugin: its name and version, the bundle it runs (absolute path), when
    it was installed (Unix time), and the capabilities it was granted then (``approved``:
    whether they widened what the app grants and were approved)."""

    name: str
    version: str
    bundle: str
    installed: float
    capabilities: tuple[str, ...] = ()
    approved: bool = False


class _File(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int
    plugins: tuple[PluginRecord, ...] = ()


@final
class PluginStore:
    """``plugins.json`` of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PLUGINS_FILE

    def load(self) -> dict[str, PluginRecord]:
        """The installed plugins, by name (none when the file does not exist). A file that
        cannot be read as plugins is moved aside (``plugins.json.corrupt-<time>``) and
        raises ConfigError naming it, the line and what is wrong; OSError when it cannot be
        read at all."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            loaded = msgspec.convert(json.loads(text), _File)
        except json.JSONDecodeError as exc:
            raise self._corrupt(f"not JSON: {exc.msg}", exc.lineno) from None
        except (msgspec.ValidationError, RecursionError) as exc:
            raise self._corrupt(f"not a list of plugins: {exc}", None) from None
        if loaded.format != _FORMAT:
            raise self._corrupt(f"format {loaded.format} is not {_FORMAT}", None)
        return {record.name: record for record in loaded.plugins}

    def save(self, records: Mapping[str, PluginRecord]) -> None:
        """Write ``records`` in place of the file, so that a crash at any point leaves either
        the old file or the new one whole."""
        body = msgspec.json.format(
            msgspec.json.encode(_File(format=_FORMAT, plugins=tuple(records.values())))
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{PLUGINS_FILE}.{os.getpid()}.tmp")
        try:
            with temporary.open("wb") as out:
                out.write(body + b"\n")
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _corrupt(self, what: str, line: int | None) -> ConfigError:
        aside = self.path.with_name(f"{PLUGINS_FILE}.corrupt-{time.time():.0f}")
        try:
            self.path.replace(aside)
            kept = f"moved aside to {aside}; the plugins it named are not started"
        except OSError as exc:
            kept = f"and could not be moved aside ({exc.strerror or exc})"
        return ConfigError(
            f"the installed plugins cannot be read: {what}; {kept}",
            path=os.fspath(self.path),
            line=line,
        )
