"""The audit log cannot fill the disk: allows on many targets are summed up, one feature's
lines take at most its share of each file, files rotate under a total cap, and decisions
that matter are always written."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from capsule._broker._audit import DISTINCT_TARGETS, AuditLog
from capsule._broker._audit_read import AuditEvent, read_events
from tests.capsule.broker.audit_helpers import TID, FakeClock, lines


def test_allows_on_many_targets_become_one_line_with_a_count_and_examples(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    clock = FakeClock()
    log = AuditLog(path, app="notes", run="run", clock=clock)
    for i in range(200_000):
        log.allow("flood", TID, "publish", f"spell.t{i}")
    for _ in range(3):
        log.allow("quiet", TID, "call", "dictionary.lookup")
    for i in range(DISTINCT_TARGETS):  # at the threshold: still one line each
        log.allow("some", TID, "publish", f"spell.t{i}")
    assert len(log._pending[("flood", TID, "publish")]) == DISTINCT_TARGETS  # memory bounded
    assert log.statistics().allowed == 200_000 + 3 + DISTINCT_TARGETS
    clock.now += 1.0
    log.close()
    written = lines(path)
    flood = [e for e in written if e["feature"] == "flood"]
    assert len(flood) == 1
    assert {k: flood[0][k] for k in ("event", "decision", "token", "action", "count")} == {
        "event": "allow",
        "decision": "allow",
        "token": TID,
        "action": "publish",
        "count": 200_000,
    }
    assert flood[0]["examples"] == ["spell.t0", "spell.t1", "spell.t2"]
    assert flood[0]["reason"] == (
        f"suppressed 200000 similar events from flood in the last 1s "
        f"(publish to more than {DISTINCT_TARGETS} targets)"
    )
    assert [(e["capability"], e["count"]) for e in written if e["feature"] == "quiet"] == [
        ("icc:call:dictionary.lookup", 3)
    ]
    assert len([e for e in written if e["feature"] == "some"]) == DISTINCT_TARGETS
    assert path.stat().st_size < 8000


def test_a_feature_past_its_share_is_counted_and_decisions_that_matter_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    log = AuditLog(path, app="notes", run="run", max_bytes=5 << 20, share=0.25)
    assert (log.file_bytes, log.share_bytes) == (1 << 20, 256 << 10)
    for i in range(20_000):  # ~250 bytes each: 5 MB of denials asked for
        log.record("call", feature="noisy", decision="deny", reason=f"attempt {i}")
        if i % 100 == 0:
            log.flush()  # a new second each time, as far as the denial cap is concerned
            log.record("delegate", feature="noisy", decision="delegate", token=TID, to="x")
            log.record("revoke", feature="noisy", decision="revoke", token=TID)
        log._windows.clear()
    log.record("call", feature="quiet", decision="deny", reason="its own")
    log.record("end", feature="noisy", decision="end", reason="stopped")
    log.close()
    written = lines(path)
    noisy = [e for e in written if e["feature"] == "noisy" and e["decision"] == "deny"]
    assert sum(len(json.dumps(e)) + 1 for e in noisy) <= (256 << 10) + 400
    assert 1000 < len(noisy) < 2000  # its share of the one file, no more
    assert [e["decision"] for e in written if e["feature"] == "quiet"] == ["deny"]
    kept = [e["decision"] for e in written if e["decision"] in {"delegate", "revoke", "end"}]
    assert kept == ["delegate", "revoke"] * 200 + ["end"]
    suppressed = [e for e in written if e["decision"] == "suppressed"]
    assert suppressed
    assert all(e["feature"] == "noisy" for e in suppressed)
    assert sum(e["count"] for e in suppressed) == 20_000 - len(noisy)
    assert "suppressed" in suppressed[0]["reason"]
    assert "its share" in suppressed[0]["reason"]
    assert log.statistics().dropped == 20_000 - len(noisy)


def test_the_log_rotates_and_all_its_files_stay_under_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    cap = 400 << 10
    log = AuditLog(path, app="notes", run="run", max_bytes=cap, keep=4, share=1.0)
    for i in range(20_000):  # ~4 MB of decisions that matter: none is summarised away
        log.record("delegate", feature=f"f{i % 7}", decision="delegate", token=TID, n=i)
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [f"run.jsonl{s}" for s in ("", ".1", ".2", ".3", ".4")]
    assert sum(f.stat().st_size for f in files) <= cap + 64 * 300  # at most one batch over
    newest = lines(path)
    assert newest[-1]["n"] == 19_999
    older = lines(tmp_path / "run.jsonl.1")
    assert older[-1]["n"] + 1 == newest[0]["n"]  # no line lost between files


@pytest.mark.parametrize(("keep", "share"), [(0, 0.25), (4, 0.0), (4, 1.5)])
def test_a_budget_that_makes_no_sense_is_refused(tmp_path: Path, keep: int, share: float) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        AuditLog(None, app="a", run="r", keep=keep, share=share)


def test_follow_goes_on_in_the_new_file_when_the_log_rotates(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    log = AuditLog(path, app="notes", run="run", max_bytes=5 * 4096, keep=4, share=1.0)
    log.record("admit", feature="a", decision="admit", n=0)
    log.flush()
    seen: list[int] = []

    def follow() -> None:  # a daemon: left waiting if following fails, and the test fails
        for item in read_events(path, follow=True, poll=0.005):
            assert isinstance(item, AuditEvent)
            seen.append(item.get("n"))
            if len(seen) == 200:
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        for n in range(1, 200):  # ~40 KB: the file rotates several times
            deadline = time.monotonic() + 2
            while len(seen) < n and time.monotonic() < deadline:
                time.sleep(0.002)
            assert len(seen) == n, f"the reader stopped at line {len(seen)}"
            log.record("admit", feature="a", decision="admit", n=n)
            log.flush()
        reader.join(2)
    finally:
        log.close()
    assert path.with_name("run.jsonl.4").exists()
    assert seen == list(range(200))
