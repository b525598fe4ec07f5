"""The versions each feature of an app ran, kept in its state directory across restarts.

Records and answers which bundle a feature runs and what a rollback goes back to; it
must not start, stop or read bundles (the supervisor does, and checks what it is told).

The file is ``<state_dir>/history.jsonl``: one JSON record a line, oldest first, at
most :data:`KEEP` per feature (the newest ``started`` record of a feature is kept
beyond that: it says which version of the app's own bundle was last seen). Every change
rewrites it whole (a temporary file, fsync, rename, fsync of the directory), so a crash
leaves the old file or the new one, never a mix. A line that is not a valid record is
an error naming the file and line; the file is then moved aside (``history.jsonl.bad-
<time>``), never silently dropped or rewritten.

One supervisor per state directory is the rule: the run directory is per process
(``RunDir``), but nothing stops two runs of one app from sharing the default state
directory (``capsule run`` warns when it sees another run of the app; the two then share
private storage too). Each change is therefore made under an exclusive ``flock`` of
``history.lock`` and rereads the file first, so two supervisors never lose each other's
records; what one reads between the other's changes can be stale.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal, TypeAlias, final, get_args

import msgspec

from capsule.errors import ConfigError

__all__ = ["HISTORY_FILE", "KEEP", "History", "VersionEvent", "VersionRecord"]

VersionEvent: TypeAlias = Literal["started", "updated", "rolled-back", "installed", "removed"]
#: records kept per feature (see the module docstring for the one kept beyond)
KEEP: Final = 64
HISTORY_FILE: Final = "history.jsonl"
_LOCK_FILE: Final = "history.lock"
#: events after which the record's bundle is what the feature runs
_RUNS: Final[frozenset[str]] = frozenset({"started", "updated", "rolled-back", "installed"})
_MAX_LINE: Final = 64 << 10


@final
class VersionRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One change of the version a feature runs.

    ``version`` and ``bundle`` (its absolute directory) are what the feature runs from
    ``at`` (unix time) on: for ``rolled-back`` the version gone back to, with ``reason``
    saying why; for ``removed`` the version removed (it runs nothing after).
    """

    feature: str
    version: str
    bundle: str
    at: float
    event: VersionEvent
    reason: str = ""

    def same_build(self, other: VersionRecord) -> bool:
        """Whether both name the same version of the same bundle directory."""
        return (self.version, self.bundle) == (other.version, other.bundle)


_EVENTS: Final = frozenset(get_args(VersionEvent))
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(VersionRecord)


@final
class History:
    """The version history of one app, in ``state_dir``.

    Reading the file happens here: a missing file (or state directory) is an empty
    history; a corrupt one raises ConfigError naming the file and line, after moving
    it aside (a new History then starts empty). Other OSErrors are raised as they are.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / HISTORY_FILE
        self._guard = threading.Lock()  # record() may run in worker threads
        self._records: tuple[VersionRecord, ...] = _load(self.path)

    def record(
        self,
        feature: str,
        version: str,
        bundle: str | os.PathLike[str],
        event: VersionEvent,
        reason: str = "",
        *,
        at: float | None = None,
    ) -> VersionRecord:
        """Append a record and write the file (crash-safe); returns the record.

        Blocking file I/O with fsync: call it from a worker thread in async code.
        ``at`` defaults to now (``time.time()``).
        """
        if event not in _EVENTS:
            raise ValueError(f"unknown history event {event!r}: one of {sorted(_EVENTS)}")
        entry = VersionRecord(
            feature=feature,
            version=version,
            bundle=os.path.abspath(bundle),
            at=time.time() if at is None else at,
            event=event,
            reason=reason,
        )
        with self._guard, self._locked():
            records = (*_load(self.path), entry)
            records = _bounded(records)
            _write(self.path, records)
            self._records = records
        return entry

    def versions(self, feature: str) -> tuple[VersionRecord, ...]:
        """Every record of ``feature`` kept, oldest first."""
        return tuple(r for r in self._records if r.feature == feature)

    def current(self, feature: str) -> VersionRecord | None:
        """The record of the bundle ``feature`` runs now; None if it never ran or was removed.

        Durable: after an app restart it is what the feature ran last (an update that
        passed probation, or what a rollback went back to). Whether a restart runs it or
        the app's own bundle is :meth:`resolve`'s call.
        """
        found = self.versions(feature)
        if not found or found[-1].event not in _RUNS:
            return None
        return found[-1]

    def previous(self, feature: str) -> VersionRecord | None:
        """What a rollback of ``feature`` goes back to: the newest record before the current
        one of another build, skipping builds that were rolled back from."""
        found = self.versions(feature)
        current = self.current(feature)
        if current is None:
            return None
        failed = [found[i - 1] for i in range(1, len(found)) if found[i].event == "rolled-back"]
        for entry in reversed(found[:-1]):
            if entry.event not in _RUNS or entry.same_build(current):
                continue
            if any(entry.same_build(bad) for bad in failed):
                continue
            return entry
        return None

    def resolve(self, feature: str, version: str, bundle: Path) -> VersionRecord | None:
        """What an app restart runs for ``feature`` instead of the app's own ``bundle``
        (at ``version``): the current record when it is another bundle, and the app's own
        bundle is still at the version the history last saw it at. None: run the app's
        bundle (a new version of it wins over an earlier update)."""
        current = self.current(feature)
        own = os.path.abspath(bundle)
        if current is None or current.bundle == own:
            return None
        seen = [r for r in self.versions(feature) if r.bundle == own and r.event in _RUNS]
        if not seen or seen[-1].version != version:
            return None
        return current

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _bounded(records: tuple[VersionRecord, ...]) -> tuple[VersionRecord, ...]:
    """The last KEEP records of each feature, plus each feature's newest ``started``."""
    kept: set[int] = set()
    counts: dict[str, int] = {}
    started: dict[str, int] = {}
    for index in range(len(records) - 1, -1, -1):
        entry = records[index]
        counts[entry.feature] = counts.get(entry.feature, 0) + 1
        if counts[entry.feature] <= KEEP:
            kept.add(index)
        if entry.event == "started" and entry.feature not in started:
            started[entry.feature] = index
    kept.update(started.values())
    return tuple(records[i] for i in sorted(kept))


def _load(path: Path) -> tuple[VersionRecord, ...]:
    try:
        with path.open("rb") as handle:
            lines = handle.read().split(b"\n")
    except (FileNotFoundError, NotADirectoryError):
        return ()
    records: list[VersionRecord] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem = f"longer than {_MAX_LINE} bytes" if len(line) > _MAX_LINE else None
        if problem is None:
            try:
                records.append(_decoder.decode(line))
                continue
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                problem = str(exc)
        aside = _move_aside(path)
        raise ConfigError(
            f"not a version record ({problem}); the history was moved aside to {aside} and "
            "starts empty: features run their app bundles",
            path=os.fspath(path),
            line=number,
        )
    return tuple(records)


def _move_aside(path: Path) -> Path:
    """Rename a corrupt history to ``history.jsonl.bad-<time>`` (never over another)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for attempt in range(1000):
        aside = path.with_name(f"{path.name}.bad-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            os.link(path, aside)
        except FileExistsError:
            continue
        path.unlink()
        return aside
    raise OSError(f"cannot move {path} aside: too many {path.name}.bad-{stamp}* files")


def _write(path: Path, records: tuple[VersionRecord, ...]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = b"".join(_encoder.encode(r) + b"\n" for r in records)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
