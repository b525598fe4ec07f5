"""The version history kept in an app's state directory: records, answers, bounds, damage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capsule._supervisor._history import KEEP, History, VersionRecord
from capsule.errors import ConfigError


def _history(tmp_path: Path) -> History:
    return History(tmp_path / "state")


def test_records_are_kept_in_order_and_survive_a_new_history(tmp_path: Path) -> None:
    history = _history(tmp_path)
    assert history.versions("spell") == ()
    assert history.current("spell") is None
    assert history.previous("spell") is None
    first = history.record("spell", "1.0.0", tmp_path / "app/spell", "started", at=100.0)
    assert first == VersionRecord(
        feature="spell",
        version="1.0.0",
        bundle=str(tmp_path / "app/spell"),
        at=100.0,
        event="started",
    )
    history.record("dict", "0.9.0", tmp_path / "app/dict", "started", at=101.0)
    second = history.record("spell", "1.1.0", tmp_path / "b/spell-1.1", "updated", at=102.0)
    assert history.versions("spell") == (first, second)
    assert history.current("spell") == second
    assert history.previous("spell") == first
    reopened = History(tmp_path / "state")  # what an app restart sees
    assert reopened.versions("spell") == (first, second)
    assert reopened.current("dict") is not None
    assert (tmp_path / "state/history.jsonl").stat().st_mode & 0o777 == 0o600
    lines = (tmp_path / "state/history.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in lines] == ["1.0.0", "0.9.0", "1.1.0"]


def test_a_relative_bundle_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    entry = _history(tmp_path).record("a", "1", "bundles/a", "installed")
    assert entry.bundle == str(tmp_path / "bundles/a")
    assert entry.at > 1e9


def test_a_rollback_goes_back_past_builds_rolled_back_from(tmp_path: Path) -> None:
    history = _history(tmp_path)
    history.record("a", "1.0", "/b/a-1.0", "started")
    history.record("a", "1.1", "/b/a-1.1", "updated")
    history.record("a", "1.2", "/b/a-1.2", "updated")
    back = history.record("a", "1.1", "/b/a-1.1", "rolled-back", "2 crashes during probation")
    assert history.current("a") == back
    previous = history.previous("a")
    assert previous is not None
    assert previous.version == "1.0"  # not 1.2, which was rolled back from
    history.record("a", "1.0", "/b/a-1.0", "rolled-back", "by hand")
    assert history.previous("a") is None  # 1.1 and 1.2 were both rolled back from


def test_a_removed_feature_runs_nothing(tmp_path: Path) -> None:
    history = _history(tmp_path)
    history.record("plug", "1", "/p/plug", "installed")
    history.record("plug", "1", "/p/plug", "removed")
    assert history.current("plug") is None
    assert history.previous("plug") is None
    assert [r.event for r in history.versions("plug")] == ["installed", "removed"]


def test_an_unknown_event_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown history event 'deployed'"):
        _history(tmp_path).record("a", "1", "/a", "deployed")  # type: ignore[arg-type]
    assert not (tmp_path / "state/history.jsonl").exists()


def test_the_app_bundle_wins_once_its_version_changed(tmp_path: Path) -> None:
    history = _history(tmp_path)
    own = tmp_path / "app/features/a"
    assert history.resolve("a", "1.0", own) is None  # nothing recorded: the app's bundle
    history.record("a", "1.0", own, "started")
    assert history.resolve("a", "1.0", own) is None  # it is current
    update = history.record("a", "1.1", "/bundles/a-1.1", "updated")
    assert history.resolve("a", "1.0", own) == update  # the update outlives a restart
    assert history.resolve("a", "1.2", own) is None  # the app's bundle moved on: it wins
    assert history.resolve("a", "1.0", tmp_path / "elsewhere/a") is None  # another app copy


def test_each_feature_keeps_its_last_records_and_its_newest_start(tmp_path: Path) -> None:
    history = _history(tmp_path)
    history.record("a", "1.0", "/app/a", "started", at=1.0)
    history.record("b", "1.0", "/app/b", "started", at=1.0)
    for number in range(KEEP + 10):
        history.record("a", f"2.{number}", f"/u/a-{number}", "updated", at=2.0 + number)
    kept = History(tmp_path / "state").versions("a")
    assert len(kept) == KEEP + 1
    assert kept[0].event == "started"  # what the app's own bundle was last seen at
    assert [r.version for r in kept[1:]] == [f"2.{n}" for n in range(10, KEEP + 10)]
    assert len(History(tmp_path / "state").versions("b")) == 1
    size = (tmp_path / "state/history.jsonl").stat().st_size
    history.record("a", "3.0", "/u/a-3", "updated")
    assert (tmp_path / "state/history.jsonl").stat().st_size < size + 200


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (b"{not json\n", "malformed"),
        (b'{"feature": "a", "version": "1"}\n', "missing required field"),
        (
            b'{"feature": "a", "version": "1", "bundle": "/a", "at": 1, "event": "deployed"}\n',
            "Invalid enum value 'deployed'",
        ),
    ],
)
def test_a_corrupt_history_names_file_and_line_and_is_moved_aside(
    tmp_path: Path, damage: bytes, fragment: str
) -> None:
    history = _history(tmp_path)
    history.record("a", "1.0", "/app/a", "started")
    path = tmp_path / "state/history.jsonl"
    good = path.read_bytes()
    path.write_bytes(good + damage + good)
    with pytest.raises(ConfigError) as raised:
        History(tmp_path / "state")
    assert (raised.value.path, raised.value.line) == (str(path), 2)
    assert fragment in raised.value.message, raised.value.message
    assert "moved aside to" in raised.value.message
    (aside,) = (tmp_path / "state").glob("history.jsonl.bad-*")
    assert aside.read_bytes() == good + damage + good  # kept for a human to look at
    assert not path.exists()
    assert History(tmp_path / "state").versions("a") == ()  # a new history starts empty
    path.write_bytes(damage)
    with pytest.raises(ConfigError):
        History(tmp_path / "state")
    assert len(list((tmp_path / "state").glob("history.jsonl.bad-*"))) == 2  # none overwritten


def test_a_missing_state_directory_is_an_empty_history(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert History(tmp_path / "file").versions("a") == ()
    assert History(tmp_path / "nowhere").versions("a") == ()
    with pytest.raises(FileExistsError):
        History(tmp_path / "file").record("a", "1", "/a", "started")


def test_a_crash_while_writing_leaves_the_old_history(tmp_path: Path) -> None:
    """A writer killed between its temporary file and the rename leaves the history whole."""
    history = _history(tmp_path)
    history.record("a", "1.0", "/app/a", "started")
    before = (tmp_path / "state/history.jsonl").read_bytes()
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from capsule._supervisor import _history\n"
        "os.replace = lambda *a: os._exit(9)  # dies before the rename\n"
        "_history.History(Path(sys.argv[1])).record('a', '2.0', '/u/a', 'updated')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state")],
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert result.returncode == 9
    assert (tmp_path / "state/history.jsonl").read_bytes() == before
    assert [r.version for r in History(tmp_path / "state").versions("a")] == ["1.0"]
    history.record("a", "3.0", "/u/a3", "updated")  # a leftover temporary file is no obstacle
    assert [r.version for r in History(tmp_path / "state").versions("a")] == ["1.0", "3.0"]


def test_two_histories_of_one_state_directory_keep_each_others_records(tmp_path: Path) -> None:
    one, two = _history(tmp_path), _history(tmp_path)
    one.record("a", "1", "/a1", "started")
    two.record("b", "1", "/b1", "started")
    one.record("a", "2", "/a2", "updated")
    assert [r.version for r in one.versions("b")] == ["1"]  # reread before it wrote
    assert [r.version for r in History(tmp_path / "state").versions("a")] == ["1", "2"]
