"""The broker's audit log: every security decision as one JSON line, one file per app run.

Must not slow the message path: allowed messages are only counted (two dict updates each)
and become one summary line per (feature, token, action, target) at the next flush, or
one line per (feature, token, action) when they reached more than DISTINCT_TARGETS
targets; it never reads the file back (that is ``_audit_read``) and never configures
structlog globally.

The log cannot fill the disk: the file is rotated (``<run>.jsonl.1`` is the newest of
``keep`` old ones) so that all of them hold at most about ``max_bytes``, and what one
feature can make it write is capped: past ``share`` of a file, its allow, deny and drop
lines are only counted, and written as one ``suppressed`` line per flush. Decisions that
matter (admit, refuse, delegate, revoke, renew, end, and any other) are always written.

Each line is a JSON object with the fields ``time`` (Unix seconds), ``ts`` (ISO 8601 UTC,
milliseconds, ``Z``), ``app``, ``run``, ``event``, ``feature``, ``decision``, ``reason``,
``token`` (32-hex token id, when one is involved), ``capability`` (its text form, when one
is involved) and any extra fields of the event (``count``, ``to``, ``parent``, ``handle``,
``revoked``, ...). ``decision`` is one of:

* ``allow``: a message was authorized (summarised with ``count``),
* ``deny``: a message was refused by policy (``deny-suppressed`` summarises a flood; event
  ``limit`` summarises the attempts past one of the feature's limits in the last flush
  interval, with ``limit`` and ``count``),
* ``admit`` / ``refuse``: a container's token was accepted / refused at admission,
* ``delegate``: a narrower token was handed to another feature (``to``, ``parent``),
* ``revoke``: tokens were revoked (``revoked``),
* ``renew`` / ``fail``: a token was renewed (``previous``, ``handle``, ``expires``) / a
  renewal failed (event ``renew``),
* ``end``: a session or a container ended,
* ``drop``: a message was dropped (queue full, peer gone),
* ``suppressed``: lines of a feature past its share of the log were only counted
  (``count``).

Any other string is accepted and written as given. The log is not thread-safe: it belongs
to the broker's event loop.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, final

import anyio
import structlog
from structlog.typing import EventDict

__all__ = [
    "AUDIT_KEEP",
    "AUDIT_MAX",
    "AUDIT_SHARE",
    "DENIALS_PER_SECOND",
    "DENY_DECISIONS",
    "DISTINCT_TARGETS",
    "AuditLog",
    "AuditStatistics",
    "default_audit_path",
]

#: deny/refuse events written in full per feature and second; the rest are summarised.
DENIALS_PER_SECOND: Final = 200
#: the decisions that count as denials (``denied``, ``denied_by``, the flood cap).
DENY_DECISIONS: Final = frozenset({"deny", "refuse"})
#: distinct targets of one (feature, token, action) written as a line each per flush; past
#: it, one line sums up all of them, with a few examples.
DISTINCT_TARGETS: Final = 16
_EXAMPLES: Final = 3
#: the most bytes the log and its rotated files hold together (as journald's SystemMaxUse).
AUDIT_MAX: Final = 64 << 20
#: rotated files kept beside the one being written.
AUDIT_KEEP: Final = 4
#: the part of each file one feature's allow, deny and drop lines may take.
AUDIT_SHARE: Final = 0.25
#: decisions whose lines count against a feature's share; the others are always written.
_SHEDDABLE: Final = frozenset({"allow", "deny", "drop"})
_MIN_FILE: Final = 4096
#: buffered lines past which ``record`` writes at once instead of at the next flush.
_BUFFER_LINES: Final = 64
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
#: the fields that come first on a line, in this order; extra fields follow.
_ORDER: Final = (
    "time", "ts", "app", "run", "event", "feature", "decision", "reason", "token", "capability"
)  # fmt: skip

_AllowKey = tuple[str, str, str]  # (feature, token id, action)


@final
@dataclass(frozen=True, slots=True)
class AuditStatistics:
    """Counters of an AuditLog; ``allowed`` includes allows not yet flushed."""

    allowed: int
    denied: int
    events: int
    dropped: int
    path: str | None


def default_audit_path(app: str, run: str) -> Path:
    """``$XDG_STATE_HOME/capsule/audit/<app>/<run>.jsonl`` (default ``~/.local/state``)."""
    for name in (app, run):
        if not name or "/" in name or "\0" in name or name in {".", ".."}:
            raise ValueError(f"not usable as a file name in an audit path: {name!r}")
    state = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says to ignore a relative XDG_STATE_HOME.
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "capsule" / "audit" / app / f"{run}.jsonl"


def _iso_utc(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def _schema_order(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the schema's fields first, in its order, then the extra ones."""
    line = {key: event_dict[key] for key in _ORDER if key in event_dict}
    line.update((key, value) for key, value in event_dict.items() if key not in line)
    return line


class _BufferSink:
    """The structlog "logger" at the end of the chain: it keeps each rendered line."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def msg(self, line: str) -> None:
        self._lines.append(line)


def _open_append(path: Path) -> IO[str]:
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=_DIR_MODE, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # an existing file, or a wide umask, gets 0600 too
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


@final
class AuditLog:
    """Security decisions of one app run, buffered in memory and appended to ``path``.

    ``path=None`` counts events and writes nothing. Lines are written by ``flush()``:
    call it from ``run()`` (once a second) and ``close()`` at the end of the run.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        app: str,
        run: str,
        clock: Callable[[], float] = time.time,
        max_bytes: int = AUDIT_MAX,
        keep: int = AUDIT_KEEP,
        share: float = AUDIT_SHARE,
    ) -> None:
        if keep < 1 or not 0 < share <= 1:
            raise ValueError(f"keep must be at least 1 and share in (0, 1]: {keep}, {share}")
        self.path = path
        self._clock = clock
        self._lines: list[str] = []
        self._pending: dict[_AllowKey, dict[str, int]] = {}  # -> target -> count
        self._overflow: dict[_AllowKey, int] = {}  # allows on targets past DISTINCT_TARGETS
        self._keep = keep
        #: bytes per file: the current one and ``keep`` rotated ones hold ``max_bytes``
        self.file_bytes = max(max_bytes // (keep + 1), _MIN_FILE)
        self.share_bytes = max(int(self.file_bytes * share), 1)
        self._size = 0
        self._used: dict[str, int] = {}  # feature -> bytes of sheddable lines in this file
        self._spent: dict[str, int] = {}  # feature -> bytes of all its lines in this file
        self._shed: dict[str, int] = {}  # feature -> sheddable lines not written since flush
        self._flushed = clock()
        self._allowed = 0
        self._denied: dict[str, int] = {}
        self._events = 0
        self._dropped = 0
        self._windows: dict[str, tuple[int, int]] = {}  # feature -> (second, denials in it)
        self._suppressed: dict[str, int] = {}
        self._limits: dict[tuple[str, str], tuple[int, str]] = {}  # (feature, limit) -> (n, why)
        self._closed = False
        self._file = None if path is None else _open_append(path)
        if self._file is not None:
            self._size = os.fstat(self._file.fileno()).st_size
        self._logger = structlog.wrap_logger(
            _BufferSink(self._lines),
            processors=[
                self._add_time,
                _schema_order,
                structlog.processors.JSONRenderer(default=str),
            ],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
        ).bind(app=app, run=run)

    # -- the hot path --------------------------------------------------------------------

    def allow(self, feature: str, token_id: str, action: str, target: str) -> None:
        """Count one allowed message; it is written as part of a summary at the next flush."""
        key = (feature, token_id, action)
        targets = self._pending.get(key)
        if targets is None:
            targets = self._pending[key] = {}
        count = targets.get(target)
        if count is not None:
            targets[target] = count + 1
        elif len(targets) < DISTINCT_TARGETS:
            targets[target] = 1
        else:  # a flood of new targets: counted, never kept (memory stays bounded)
            self._overflow[key] = self._overflow.get(key, 0) + 1

    def limit(self, feature: str, limit: str, reason: str) -> None:
        """Count one attempt of ``feature`` past its ``limit``: however many there are, they
        become one line (with ``count`` and the last ``reason``) at the next flush."""
        self._denied[feature] = self._denied.get(feature, 0) + 1
        key = (feature, limit)
        count, _ = self._limits.get(key, (0, ""))
        self._limits[key] = (count + 1, reason)

    # -- everything else -----------------------------------------------------------------

    def record(
        self,
        event: str,
        *,
        feature: str,
        decision: str,
        reason: str = "",
        token: str | None = None,
        capability: str | None = None,
        **fields: Any,
    ) -> None:
        """Buffer one event line; deny/refuse floods past the cap are only counted."""
        if decision in DENY_DECISIONS:
            self._denied[feature] = self._denied.get(feature, 0) + 1
            if not self._under_cap(feature):
                self._suppressed[feature] = self._suppressed.get(feature, 0) + 1
                self._dropped += 1
                return
        elif decision == "allow":
            self._allowed += int(fields.get("count", 1))  # a summary line counts what it sums
        self._emit(
            event,
            feature=feature,
            decision=decision,
            reason=reason,
            token=token,
            capability=capability,
            fields=fields,
        )
        if len(self._lines) > _BUFFER_LINES:
            self._write()

    def flush(self) -> None:
        """Write the allow summaries, the flood summaries and every buffered line."""
        pending, self._pending = self._pending, {}
        overflow, self._overflow = self._overflow, {}
        now = self._clock()
        seconds, self._flushed = max(now - self._flushed, 0.0), now
        for key, targets in pending.items():
            feature, token_id, action = key
            more = overflow.get(key, 0)
            self._allowed += sum(targets.values()) + more
            if more:
                self._summarise(key, targets, more, seconds)
                continue
            for target, count in targets.items():
                self._emit(
                    "allow",
                    feature=feature,
                    decision="allow",
                    reason="",
                    token=token_id,
                    capability=f"icc:{action}:{target}",
                    fields={"count": count},
                )
        limits, self._limits = self._limits, {}
        for (feature, limit), (count, reason) in limits.items():
            self._emit(
                "limit",
                feature=feature,
                decision="deny",
                reason=reason,
                token=None,
                capability=None,
                fields={"limit": limit, "count": count},
            )
        suppressed, self._suppressed = self._suppressed, {}
        for feature, count in suppressed.items():
            self._emit(
                "deny-suppressed",
                feature=feature,
                decision="deny",
                reason=f"more than {DENIALS_PER_SECOND} denials in one second",
                token=None,
                capability=None,
                fields={"count": count},
            )
        shed, self._shed = self._shed, {}
        for feature, count in shed.items():
            self._emit(
                "suppressed",
                feature=feature,
                decision="suppressed",
                reason=(
                    f"suppressed {count} similar events from {feature} in the last "
                    f"{seconds:.0f}s: its lines took {self.share_bytes} bytes of this "
                    f"{self.file_bytes}-byte file, its share"
                ),
                token=None,
                capability=None,
                fields={"count": count},
            )
        self._write()

    def _summarise(
        self, key: _AllowKey, targets: dict[str, int], more: int, seconds: float
    ) -> None:
        """One line for allows on more than DISTINCT_TARGETS targets in one interval."""
        feature, token_id, action = key
        count = sum(targets.values()) + more
        self._emit(
            "allow",
            feature=feature,
            decision="allow",
            reason=(
                f"suppressed {count} similar events from {feature} in the last {seconds:.0f}s "
                f"({action} to more than {DISTINCT_TARGETS} targets)"
            ),
            token=token_id,
            capability=None,
            fields={"action": action, "count": count, "examples": list(targets)[:_EXAMPLES]},
        )

    async def run(self, interval: float = 1.0) -> None:
        """Flush every ``interval`` seconds until cancelled; ``close()`` writes the rest."""
        while True:
            await anyio.sleep(interval)
            self.flush()

    def close(self) -> None:
        """Flush and close the file; later events are counted but not written."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None

    def statistics(self) -> AuditStatistics:
        return AuditStatistics(
            allowed=self._allowed
            + sum(sum(targets.values()) for targets in self._pending.values())
            + sum(self._overflow.values()),
            denied=sum(self._denied.values()),
            events=self._events,
            dropped=self._dropped,
            path=None if self.path is None else str(self.path),
        )

    def over_share(self, feature: str) -> bool:
        """Whether ``feature``'s lines, those that are always written included, took its share
        of the current file: the broker then refuses what would add more of them."""
        return self._spent.get(feature, 0) >= self.share_bytes

    def denied_by(self, feature: str) -> int:
        """How many deny/refuse decisions were recorded for ``feature``, suppressed or not."""
        return self._denied.get(feature, 0)

    # -- internals -----------------------------------------------------------------------

    def _under_cap(self, feature: str) -> bool:
        second = math.floor(self._clock())
        start, count = self._windows.get(feature, (second, 0))
        if start != second:
            count = 0
        if count >= DENIALS_PER_SECOND:
            return False
        self._windows[feature] = (second, count + 1)
        return True

    def _emit(
        self,
        event: str,
        *,
        feature: str,
        decision: str,
        reason: str,
        token: str | None,
        capability: str | None,
        fields: dict[str, Any],
    ) -> None:
        sheddable = decision in _SHEDDABLE
        used = self._used.get(feature, 0) if sheddable else 0
        if used >= self.share_bytes:  # a summary line stands for ``count`` events
            events = int(fields.get("count", 1))
            self._shed[feature] = self._shed.get(feature, 0) + events
            self._dropped += events
            return
        optional = {"token": token, "capability": capability}
        present = {key: value for key, value in optional.items() if value is not None}
        self._logger.msg(
            event, feature=feature, decision=decision, reason=reason, **present, **fields
        )
        self._events += 1
        size = len(self._lines[-1]) + 1
        self._spent[feature] = self._spent.get(feature, 0) + size
        if sheddable:
            self._used[feature] = used + size

    def _add_time(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        """structlog processor: ``time`` (Unix seconds) and ``ts`` (ISO 8601 UTC) from the clock."""
        now = self._clock()
        event_dict["time"] = now
        event_dict["ts"] = _iso_utc(now)
        return event_dict

    def _write(self) -> None:
        text = "".join(line + "\n" for line in self._lines)
        self._lines.clear()  # the same list the structlog sink appends to
        if self._file is None or not text:
            return
        self._file.write(text)
        self._file.flush()
        self._size += len(text)  # JSON lines are ASCII: characters are bytes
        if self._size >= self.file_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """``<run>.jsonl`` becomes ``.1``, ``.1`` becomes ``.2``, ...; the oldest goes."""
        assert self._file is not None  # noqa: S101 - only called after a write
        assert self.path is not None  # noqa: S101 - as the file
        self._file.close()
        self._file = None
        name = self.path.name
        for number in range(self._keep, 0, -1):
            source = self.path if number == 1 else self.path.with_name(f"{name}.{number - 1}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{name}.{number}"))
        self._file = _open_append(self.path)
        self._size = 0
        self._used.clear()
        self._spent.clear()
