"""The broker's audit log: what it writes, what it only counts, and reading it back."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from capsule._broker import _audit_read
from capsule._broker._audit import DENIALS_PER_SECOND, AuditLog, default_audit_path
from capsule._broker._audit_read import AuditEvent, AuditProblem, read_events
from tests.capsule.broker.audit_helpers import T0, TID, FakeClock, lines


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "audit" / "notes" / "run-1.jsonl"


@pytest.fixture
def log(log_path: Path, clock: FakeClock) -> Iterator[AuditLog]:
    audit = AuditLog(log_path, app="notes", run="run-1", clock=clock)
    yield audit
    audit.close()


def test_allows_are_counted_and_become_one_summary_line_each_at_flush(
    log: AuditLog, log_path: Path
) -> None:
    for _ in range(41):
        log.allow("plugin", TID, "call", "dictionary.lookup")
    log.allow("plugin", TID, "publish", "notes.changed")
    assert log_path.read_text("utf-8") == ""  # the hot path writes nothing
    assert log.statistics().allowed == 42
    log.flush()
    first, second = lines(log_path)
    assert first == {
        "time": T0,
        "ts": "2026-11-25T10:00:00.125Z",
        "app": "notes",
        "run": "run-1",
        "event": "allow",
        "feature": "plugin",
        "decision": "allow",
        "reason": "",
        "token": TID,
        "capability": "icc:call:dictionary.lookup",
        "count": 41,
    }
    assert (second["capability"], second["count"]) == ("icc:publish:notes.changed", 1)
    log.flush()  # the counters were cleared: nothing is summarised twice
    assert len(lines(log_path)) == 2
    assert log.statistics().allowed == 42
    assert log.statistics().events == 2


def test_record_lines_carry_the_schema_fields_in_order(log: AuditLog, log_path: Path) -> None:
    log.record(
        "call",
        feature="plugin",
        decision="deny",
        reason="no capability covers it",
        token=TID,
        capability="icc:call:dictionary.lookup",
    )
    log.record("delegate", feature="editor", decision="delegate", to="plugin", parent=TID)
    log.record("end", feature="plugin", decision="end", when=Path("/x"), ids={"a"})
    log.flush()
    deny, delegate, end = lines(log_path)
    assert list(deny) == [
        *("time", "ts", "app", "run", "event", "feature", "decision", "reason"),
        *("token", "capability"),
    ]
    assert deny["reason"] == "no capability covers it"
    assert "token" not in delegate
    assert "capability" not in delegate
    assert (delegate["to"], delegate["parent"]) == ("plugin", TID)
    assert (end["when"], end["ids"]) == ("/x", "{'a'}")  # not JSON: written as str()
    stats = log.statistics()
    assert (stats.denied, stats.events, stats.dropped) == (1, 3, 0)
    assert log.denied_by("plugin") == 1
    assert log.denied_by("editor") == 0


def test_the_file_is_private_and_appended_to(log_path: Path, clock: FakeClock) -> None:
    first = AuditLog(log_path, app="notes", run="run-1", clock=clock)
    first.record("admit", feature="plugin", decision="admit", token=TID)
    first.close()
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(log_path.parent.parent.stat().st_mode) == 0o700
    log_path.chmod(0o644)
    second = AuditLog(log_path, app="notes", run="run-1", clock=clock)
    second.record("refuse", feature="plugin", decision="refuse", reason="expired")
    second.close()
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert [line["event"] for line in lines(log_path)] == ["admit", "refuse"]


def test_many_records_are_written_before_the_next_flush(log: AuditLog, log_path: Path) -> None:
    for index in range(64):
        log.record("drop", feature="plugin", decision="drop", index=index)
    assert log_path.read_text("utf-8") == ""
    log.record("drop", feature="plugin", decision="drop", index=64)
    assert [line["index"] for line in lines(log_path)] == list(range(65))


def test_a_denial_flood_is_capped_per_feature_and_second_and_summarised(
    log: AuditLog, log_path: Path, clock: FakeClock
) -> None:
    for _ in range(DENIALS_PER_SECOND + 50):
        log.record("call", feature="evil", decision="deny", reason="no capability covers it")
    clock.now += 0.5  # the same second: still capped
    log.record("admit", feature="evil", decision="refuse", reason="bad signature")
    log.record("call", feature="good", decision="deny", reason="one of its own")
    log.flush()
    written = lines(log_path)
    assert len(written) == DENIALS_PER_SECOND + 2
    assert written[DENIALS_PER_SECOND]["feature"] == "good"
    summary = written[-1]
    assert {k: summary[k] for k in ("event", "feature", "decision", "count")} == {
        "event": "deny-suppressed",
        "feature": "evil",
        "decision": "deny",
        "count": 51,
    }
    stats = log.statistics()
    assert (stats.denied, stats.dropped) == (DENIALS_PER_SECOND + 52, 51)
    assert log.denied_by("evil") == DENIALS_PER_SECOND + 51

    clock.now += 1  # a new second: written in full again, and no second summary
    log.record("call", feature="evil", decision="deny")
    log.flush()
    assert [line["event"] for line in lines(log_path)[len(written) :]] == ["call"]


def test_close_is_idempotent_and_writes_what_is_pending(log: AuditLog, log_path: Path) -> None:
    log.allow("plugin", TID, "subscribe", "notes.changed")
    log.close()
    log.close()
    assert [line["count"] for line in lines(log_path)] == [1]
    log.record("end", feature="plugin", decision="end")  # counted, not written
    log.close()
    assert len(lines(log_path)) == 1
    assert log.statistics().events == 2


def test_without_a_path_nothing_is_written_but_everything_counted(
    tmp_path: Path, clock: FakeClock
) -> None:
    log = AuditLog(None, app="notes", run="run-1", clock=clock)
    log.allow("plugin", TID, "call", "x.y")
    log.record("call", feature="plugin", decision="deny")
    log.close()
    stats = log.statistics()
    assert (stats.allowed, stats.denied, stats.events, stats.path) == (1, 1, 2, None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.trio
async def test_run_flushes_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    log = AuditLog(None, app="notes", run="run-1", clock=lambda: T0)
    log.allow("plugin", TID, "call", "x.y")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run, 1.0)
        await trio.sleep(0.9)
        assert log.statistics().events == 0
        await trio.sleep(0.2)
        assert log.statistics().events == 1
        log.allow("plugin", TID, "call", "x.y")
        await trio.sleep(1.0)
        assert log.statistics().events == 2
        nursery.cancel_scope.cancel()


def test_default_path_follows_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_audit_path("notes", "r1") == tmp_path / "capsule/audit/notes/r1.jsonl"
    monkeypatch.setenv("XDG_STATE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home/.local/state/capsule/audit/notes/r1.jsonl"
    assert default_audit_path("notes", "r1") == expected
    with pytest.raises(ValueError, match="audit path"):
        default_audit_path("..", "r1")


# -- reading -------------------------------------------------------------------------------


def test_read_events_reports_a_bad_line_with_its_number_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_bytes(b'{"event": "a"}\n\nnot json\n[1, 2]\n\xff\n{"event": "b"}')
    items = list(read_events(path))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("AuditEvent", 1),
        ("AuditProblem", 3),
        ("AuditProblem", 4),
        ("AuditProblem", 5),
        ("AuditEvent", 6),
    ]
    assert isinstance(items[1], AuditProblem)
    assert str(items[1]) == f"{path}:3: invalid JSON: Expecting value at column 1"
    assert isinstance(items[2], AuditProblem)
    assert items[2].message == "a JSON list, not an object"
    assert isinstance(items[-1], AuditEvent)
    assert (items[-1].get("event"), items[-1].raw) == ("b", '{"event": "b"}')


def test_follow_picks_up_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"event": "first"}\n', "utf-8")
    reading = threading.Event()

    def append() -> None:
        # Write once the reader is at the end of the file; if the test has failed by the
        # deadline, a last line ends the reader's wait.
        if reading.wait(1.5):
            with path.open("a", encoding="utf-8") as file:
                file.write('{"event": "second"}\n{"event": "third"}\n')
        else:
            with path.open("a", encoding="utf-8") as file:
                file.write('{"event": "deadline"}\n')

    writer = threading.Thread(target=append)
    writer.start()
    events = read_events(path, follow=True, poll=0.01)
    seen: list[str] = []
    deadline = time.monotonic() + 1.5
    try:
        for item in events:
            assert isinstance(item, AuditEvent)
            seen.append(item.get("event"))
            reading.set()
            if len(seen) == 3 or time.monotonic() > deadline:
                break
    finally:
        events.close()
        reading.set()
        writer.join()
    assert seen == ["first", "second", "third"]


def test_follow_waits_for_the_newline_of_a_partial_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"event": "fir', "utf-8")
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the rest of the line arrives while the reader waits
        waits.append(seconds)
        with path.open("a", encoding="utf-8") as file:
            file.write('st"}\n' if len(waits) == 1 else '{"event": "next"}\n')

    monkeypatch.setattr(_audit_read, "sleep", sleep)
    events = read_events(path, follow=True, poll=0.05)
    first, second = next(events), next(events)
    events.close()
    assert isinstance(first, AuditEvent)
    assert isinstance(second, AuditEvent)
    assert (first.get("event"), first.line, second.get("event"), second.line) == (
        "first",
        1,
        "next",
        2,
    )
    assert waits == [0.05, 0.05]


def test_without_follow_a_partial_last_line_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"event": "a"}\n{"event": "b"}', "utf-8")
    assert [i.get("event") for i in read_events(path) if isinstance(i, AuditEvent)] == ["a", "b"]


def test_a_recorded_allow_summary_counts_what_it_sums(log: AuditLog) -> None:
    """An allow line with ``count`` (a view's file operations, say) adds that many allows."""
    log.record("fs-allow", feature="editor", decision="allow", mount="/notes", count=5)
    log.record("connect", feature="exporter", decision="allow")
    assert log.statistics().allowed == 6
