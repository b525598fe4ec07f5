"""How ``capsule run``, ``ps`` and ``top`` show a running app: rows, rates, text and rich tables.

Presentation only: it formats Snapshots and never talks to the app.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, final

if TYPE_CHECKING:
    from rich.console import RenderableType

    from capsule._control._protocol import FeatureRow, Snapshot

__all__ = [
    "Rates",
    "as_json",
    "header",
    "human_duration",
    "human_size",
    "rates",
    "rich_view",
    "status_lines",
    "text_table",
]

_PS_COLUMNS: Final = (
    "FEATURE", "VERSION", "STATE", "PID", "RESTARTS", "UPTIME", "MEMORY", "CALLS", "DENIED",
    "FS-DENIED", "SUBS", "DELEG", "QUEUED", "WAKES", "IDLE-STOP",
)  # fmt: skip
_RATE_COLUMNS: Final = ("MSG/S", "CALL/S", "CPU%")
_ON_DEMAND_COLUMNS: Final = ("WAKES", "IDLE-STOP")
_NUMERIC: Final = frozenset(
    {"PID", "RESTARTS", "UPTIME", "MEMORY", "CALLS", "DENIED", "FS-DENIED", "SUBS", "DELEG"}
    | {"QUEUED", "WAKES", "IDLE-STOP"}
)
_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")
#: columns a narrow terminal loses first, in this order
_DROP_FIRST: Final = (
    "IDLE-STOP",
    "WAKES",
    "VERSION",
    "QUEUED",
    "DELEG",
    "SUBS",
    "FS-DENIED",
    "CALL/S",
    "UPTIME",
    "CALLS",
    "RESTARTS",
)


@final
@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates of one feature between two snapshots (None: not measurable yet)."""

    messages: float | None
    calls: float | None
    cpu_percent: float | None


def _rate(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or after < before:
        return None
    return (after - before) / seconds


def rates(previous: Snapshot | None, current: Snapshot) -> dict[str, Rates]:
    """Each feature's rates since ``previous``; None for a feature that restarted since."""
    if previous is None or current.clock <= previous.clock or previous.pid != current.pid:
        return {}
    seconds = current.clock - previous.clock
    before = {row.name: row for row in previous.features}
    found: dict[str, Rates] = {}
    for row in current.features:
        old = before.get(row.name)
        if old is None or old.pid != row.pid or row.pid is None:
            continue
        cpu = _rate(old.cpu_usage_ns, row.cpu_usage_ns, seconds)
        found[row.name] = Rates(
            messages=_rate(old.messages, row.messages, seconds),
            calls=_rate(old.calls_total, row.calls_total, seconds),
            cpu_percent=None if cpu is None else cpu / 1e7,
        )
    return found


def human_size(size: int | None) -> str:
    """``12.3MiB``; ``-`` when unknown (no cgroup)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    """``45s``, ``3m12s``, ``2h05m``, ``3d04h``; ``-`` when not running."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def header(snapshot: Snapshot) -> str:
    """One line about the whole app."""
    quarantined = f"  quarantined {','.join(snapshot.quarantined)}" if snapshot.quarantined else ""
    return (
        f"app {snapshot.app}  pid {snapshot.pid}  up {human_duration(snapshot.uptime)}  "
        f"isolation {snapshot.isolation}  calls {snapshot.calls_routed}  "
        f"allowed {snapshot.allowed}  denied {snapshot.denied}{quarantined}"
    )


def _of(row: FeatureRow, used: int, limit: int) -> str:
    """``3/1024``: what a feature holds out of its limit (``-`` when not running)."""
    return "-" if row.pid is None else f"{used}/{limit}"


def _wakes(row: FeatureRow) -> str:
    """An on-demand feature's wakes and its last time to ready: ``3 (0.21s)``."""
    if not row.on_demand:
        return "-"
    ready = "" if row.time_to_ready is None else f" ({row.time_to_ready:.2f}s)"
    return f"{row.wakes}{ready}"


def _row(row: FeatureRow, rate: Rates | None, *, with_rates: bool) -> list[str]:
    cells = [
        row.name,
        row.update or row.version,  # "1.0 -> 1.1 (probation)" during a live update
        row.state,
        "-" if row.pid is None else str(row.pid),
        str(row.restarts),
        human_duration(row.uptime),
        human_size(row.memory_current),
        str(row.calls_total),
        str(row.denied),
        str(row.files_denied),
        _of(row, row.subscriptions, row.subscriptions_limit),
        _of(row, row.delegations, row.delegations_limit),
        "-" if row.pid is None else human_size(row.queued),
        _wakes(row),
        "-" if row.idle_left is None else human_duration(row.idle_left),
    ]
    if with_rates:
        cells += [
            _number(None if rate is None else rate.messages),
            _number(None if rate is None else rate.calls),
            _number(None if rate is None else rate.cpu_percent),
        ]
    return cells


def _table(
    snapshot: Snapshot, found: Mapping[str, Rates] | None
) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of cells per feature (rate columns when ``found`` is given;
    WAKES and IDLE-STOP when a feature runs on demand)."""
    with_rates = found is not None
    columns = list(_PS_COLUMNS + (_RATE_COLUMNS if with_rates else ()))
    rows = [_row(r, (found or {}).get(r.name), with_rates=with_rates) for r in snapshot.features]
    if not any(r.on_demand for r in snapshot.features):
        kept = [i for i, column in enumerate(columns) if column not in _ON_DEMAND_COLUMNS]
        return [columns[i] for i in kept], [[row[i] for i in kept] for row in rows]
    return columns, rows


def _fit(columns: list[str], rows: list[list[str]], width: int) -> list[int]:
    """The indices of the columns to show in ``width`` characters, dropping the least
    needed ones first (a terminal too narrow for every column)."""
    widths = {c: max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)}
    kept = list(columns)
    for column in _DROP_FIRST:
        if sum(widths[c] + 2 for c in kept) - 2 <= width:
            break
        if column in kept:
            kept.remove(column)
    return [columns.index(c) for c in kept]


def _justify(column: str) -> Literal["left", "right"]:
    return "right" if column in _NUMERIC or column in _RATE_COLUMNS else "left"


def text_table(snapshot: Snapshot, found: Mapping[str, Rates] | None = None) -> str:
    """The header line and an aligned table, one feature a row (rates when given)."""
    columns, rows = _table(snapshot, found)
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    lines = [header(snapshot)]
    for cells in [columns, *rows]:
        padded = [
            cell.rjust(width) if _justify(column) == "right" else cell.ljust(width)
            for cell, width, column in zip(cells, widths, columns, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    lines += _failures(snapshot)
    lines += _variant_rows(snapshot)
    return "\n".join(lines) + "\n"


def _variant_rows(snapshot: Snapshot) -> list[str]:
    """Each experiment under way: a row per variant (``capsule variants status``'s table)."""
    return [
        f"  {line}" if i else f"variants of {line}"
        for status in snapshot.variants
        for i, line in enumerate(status.table().splitlines())
    ]


def _failures(snapshot: Snapshot) -> list[str]:
    """A line for each feature whose tokens could not be renewed (it loses access when they
    lapse), and for each on-demand feature whose last wake failed to start it, so that no
    failure stays out of sight."""
    return [
        f"{row.name}: token renewal failing ({row.renewals_failed} failed): {row.renewal_error}"
        for row in snapshot.features
        if row.renewal_error
    ] + [
        f"{row.name}: its last wake {row.last_exit}"
        for row in snapshot.features
        if row.on_demand and row.pid is None and (row.last_exit or "").startswith("failed to start")
    ]


def rich_view(
    snapshot: Snapshot, found: Mapping[str, Rates] | None, *, width: int, footer: str = ""
) -> RenderableType:
    """The same as :func:`text_table` as a rich renderable for a live terminal view, without
    the columns that do not fit in ``width``."""
    from rich.console import Group  # noqa: PLC0415 - rich only for a terminal
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    columns, rows = _table(snapshot, found)
    shown = _fit(columns, rows, width)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i in shown:
        table.add_column(columns[i], justify=_justify(columns[i]), no_wrap=True)
    styles = {"running": "green", "quarantined": "bold red", "restarting": "yellow"}
    for row, cells in zip(snapshot.features, rows, strict=True):
        table.add_row(*(Text(cells[i]) for i in shown), style=styles.get(row.state, "dim"))
    parts: list[RenderableType] = [Text(header(snapshot), style="bold"), table]
    parts += [Text(line, style="bold red") for line in _failures(snapshot)]
    parts += [Text(line) for line in _variant_rows(snapshot)]
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def _row_fields(row: FeatureRow, rate: Rates | None) -> dict[str, Any]:
    return (
        {
            "feature": row.name,
            "state": row.state,
            "pid": row.pid,
            "restarts": row.restarts,
            "calls": row.calls_total,
            "msgs_per_s": None
            if rate is None or rate.messages is None
            else round(rate.messages, 2),
            "denied": row.denied,
            "files_denied": row.files_denied,
            "memory": row.memory_current,
        }
        | ({"renewal_error": row.renewal_error} if row.renewal_error else {})
        | ({"wakes": row.wakes, "idle_left": row.idle_left} if row.on_demand else {})
    )


def status_lines(snapshot: Snapshot, found: Mapping[str, Rates], *, log_format: str) -> list[str]:
    """One line per feature for a log (``capsule run`` when stdout is not a terminal):
    ``key=value`` text, or JSON objects with ``--log-format json``."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds").removesuffix("+00:00") + "Z"
    lines: list[str] = []
    for row in snapshot.features:
        fields = _row_fields(row, found.get(row.name))
        if log_format == "json":
            lines.append(
                json.dumps({"ts": stamp, "event": "status", "app": snapshot.app, **fields})
            )
            continue
        fields["memory"] = human_size(row.memory_current)
        text = " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items())
        lines.append(f"{stamp} status app={snapshot.app} {text}")
    return lines


def as_json(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as a JSON-ready dict (``capsule ps --format json``)."""
    import msgspec  # noqa: PLC0415 - a snapshot came with it: `capsule --help` needs none

    data: dict[str, Any] = msgspec.to_builtins(snapshot)
    data.pop("t", None)
    data.pop("clock", None)
    return data
