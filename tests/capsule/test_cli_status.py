"""How ``capsule run``, ``ps`` and ``top`` show an app: rates, the table, human units."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from capsule._cli._status import (
    Rates,
    human_duration,
    human_size,
    rates,
    rich_view,
    status_lines,
    text_table,
)
from capsule._control._protocol import FeatureRow, Snapshot


def _row(name: str, *, pid: int | None = 7, messages: int = 0, cpu: int | None = 0) -> FeatureRow:
    return FeatureRow(
        name=name, version="1.0.0", state="running" if pid else "stopped", pid=pid,
        restarts=0, calls_total=messages // 2, calls_in_flight=0, messages=messages, denied=1,
        events_dropped=0, uptime=61.0 if pid else None, last_exit=None,
        memory_current=3 << 20 if pid else None, memory_limit=None, oom_kills=0,
        pids_current=None, cpu_usage_ns=cpu, files_allowed=0, files_denied=2,
        subscriptions=3, subscriptions_limit=1024, delegations=0, delegations_limit=64,
        queued=2048, queue_limit=4 << 20,
    )  # fmt: skip


def _snapshot(clock: float, *rows: FeatureRow) -> Snapshot:
    return Snapshot(
        app="notes", run="1-2", pid=1, started=0.0, uptime=3700.0, clock=clock,
        isolation="full", cgroups="v2", audit_path=None, containers_started=2, restarts=0,
        quarantined=[], calls_routed=0, events_published=0, allowed=0, denied=1,
        features=list(rows),
    )  # fmt: skip


def test_rates_are_per_second_between_snapshots_of_the_same_container() -> None:
    before = _snapshot(10.0, _row("a", messages=10, cpu=0), _row("b", pid=8), _row("c", pid=9))
    after = _snapshot(
        12.0, _row("a", messages=30, cpu=500_000_000), _row("b", pid=80), _row("c", pid=None)
    )
    found = rates(before, after)
    assert found == {"a": Rates(messages=10.0, calls=5.0, cpu_percent=25.0)}
    assert rates(None, after) == {}
    assert rates(after, before) == {}


def test_text_table_aligns_one_row_per_feature() -> None:
    text = text_table(_snapshot(1.0, _row("spellcheck"), _row("b", pid=None)), {})
    head, columns, first, second = text.splitlines()
    assert head == ("app notes  pid 1  up 1h01m  isolation full  calls 0  allowed 0  denied 1")
    assert columns.split()[-3:] == ["MSG/S", "CALL/S", "CPU%"]
    assert first.split() == [
        *("spellcheck", "1.0.0", "running", "7", "0", "1m01s", "3.0MiB", "0", "1", "2"),
        *("3/1024", "0/64", "2.0KiB", "-", "-", "-"),
    ]
    assert second.split()[2:7] == ["stopped", "-", "0", "-", "-"]
    assert second.split()[10:13] == ["-", "-", "-"]  # not running: it holds nothing
    assert len({len(line) for line in (columns, first)}) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (59.9, "59s"), (61, "1m01s"), (7260, "2h01m"), (90000, "1d01h")],
)
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "-"), (0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (3 << 30, "3.0GiB")],
)
def test_human_size(size: int | None, text: str) -> None:
    assert human_size(size) == text


def test_a_narrow_terminal_loses_the_least_needed_columns_first() -> None:
    from rich.console import Console  # noqa: PLC0415 - only this test renders with rich

    snapshot = _snapshot(1.0, _row("spellcheck"), _row("b", pid=None))
    every = [
        *("FEATURE", "VERSION", "STATE", "PID", "RESTARTS", "UPTIME", "MEMORY", "CALLS"),
        *("DENIED", "FS-DENIED", "SUBS", "DELEG", "QUEUED", "MSG/S", "CALL/S", "CPU%"),
    ]
    gone = {"VERSION", "QUEUED", "DELEG", "SUBS", "FS-DENIED", "CALL/S"}
    narrow = [c for c in every if c not in gone]
    for width, columns in [(200, every), (80, narrow)]:
        console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
        console.print(rich_view(snapshot, {}, width=width))
        lines = console.export_text().splitlines()
        assert lines[1].split() == columns
        assert max(len(line) for line in lines) <= width


def test_a_failing_token_renewal_is_shown_under_the_table_and_in_status_lines() -> None:
    failing = dataclasses.replace(
        _row("worker"), renewals_failed=2, renewal_error="renewing token ab failed: down"
    )
    snapshot = _snapshot(1.0, _row("quiet"), failing)
    lines = text_table(snapshot).splitlines()
    assert lines[-1] == "worker: token renewal failing (2 failed): renewing token ab failed: down"
    assert len(lines) == 5  # header, columns, two rows, one warning
    status = status_lines(snapshot, {}, log_format="json")
    assert "renewal_error" not in json.loads(status[0])
    assert json.loads(status[1])["renewal_error"] == "renewing token ab failed: down"


def test_an_on_demand_feature_shows_its_wakes_and_idle_time_left() -> None:
    awake = dataclasses.replace(
        _row("exporter"), on_demand=True, wakes=3, time_to_ready=0.214, idle_left=42.0
    )
    asleep = dataclasses.replace(
        _row("plugin", pid=None), state="stopped (on-demand)", on_demand=True, wakes=0
    )
    text = text_table(_snapshot(1.0, awake, asleep))
    _, columns, first, second = text.splitlines()
    assert columns.split()[-2:] == ["WAKES", "IDLE-STOP"]
    assert first.split()[-3:] == ["3", "(0.21s)", "42s"]
    assert "stopped (on-demand)" in second
    assert second.split()[-2:] == ["0", "-"]
    fields = json.loads(status_lines(_snapshot(1.0, awake), {}, log_format="json")[0])
    assert (fields["wakes"], fields["idle_left"]) == (3, 42.0)


def test_a_failed_wake_is_shown_under_the_table() -> None:
    failed = dataclasses.replace(
        _row("exporter", pid=None),
        state="stopped (on-demand)",
        on_demand=True,
        wakes=1,
        last_exit="failed to start: feature 'exporter': loading its code failed: disk full",
    )
    lines = text_table(_snapshot(1.0, failed)).splitlines()
    assert lines[-1] == (
        "exporter: its last wake failed to start: feature 'exporter': "
        "loading its code failed: disk full"
    )
