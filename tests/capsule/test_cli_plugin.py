"""``capsule plugin add|remove|list`` against a real ``capsule run``, each command in its own
subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.capsule.cli_run_helpers import (
    ROOT,
    WAIT,
    capsule,
    leftovers_of,
    read_terminal,
    running,
)
from tests.capsule.supervisor.plugin_helpers import counter

PLUGINS = {
    "call": ["counter.*"],
    "fs": [{"path": "/state", "mode": "private", "quota": "1MiB"}],
}


def test_plugins_are_added_listed_and_removed(tmp_path: Path) -> None:
    bundle = str(counter(tmp_path))
    with running(tmp_path, plugins=PLUGINS) as run:
        app = ("--app", run.name)
        review = capsule("plugin", "add", bundle, "--dry-run", *app)
        assert review.returncode == 0, review.stderr
        assert f"plugin counter 1.0.0 from {bundle} would be granted:" in review.stdout
        assert "+ fs:read,write:/state/?bytes=1048576" in review.stdout
        assert "needs --approve" in review.stdout

        refused = capsule("plugin", "add", bundle, *app)
        assert refused.returncode == 1
        assert "+ fs:read,write:/state/?bytes=1048576" in refused.stderr
        assert "rerun with --approve to install it" in refused.stderr
        listed = capsule("plugin", "list", *app)
        assert listed.stdout == "no plugins installed\n"

        added = capsule("plugin", "add", bundle, "--approve", *app)
        assert (added.returncode, added.stdout) == (0, "counter: running\n"), added.stderr
        again = capsule("plugin", "add", bundle, "--approve", *app)
        assert again.returncode == 1
        assert "already installed as a plugin" in again.stderr
        called = capsule("call", "counter.count", '"three small words"', *app)
        assert (called.returncode, called.stdout) == (0, "3\n"), called.stderr
        listed = capsule("plugin", "list", "--format", "json", *app)
        (row,) = json.loads(listed.stdout)
        assert (row["name"], row["version"], row["state"]) == ("counter", "1.0.0", "running")
        assert row["bundle"] == bundle
        ps = json.loads(capsule("ps", "--format", "json", *app).stdout)
        assert [f["name"] for f in ps["features"]] == ["echo", "spare", "counter"]

        removed = capsule("plugin", "remove", "counter", "--drain", "1s", "--purge", *app)
        assert (removed.returncode, removed.stdout) == (0, "counter: removed\n"), removed.stderr
        gone = capsule("call", "counter.count", '"x"', *app)
        assert gone.returncode == 1
        assert "was removed at" in gone.stderr
        not_plugin = capsule("plugin", "remove", "echo", *app)
        assert not_plugin.returncode == 1
        assert "feature of app.toml, not a plugin" in not_plugin.stderr
        bad_drain = capsule("plugin", "remove", "counter", "--drain", "soon", *app)
        assert bad_drain.returncode == 2
        assert "expected a duration" in bad_drain.stderr
        assert capsule("plugin", "list", *app).stdout == "no plugins installed\n"
        control = run.control
    assert control is not None
    assert leftovers_of(control) == []
    lines = [json.loads(line) for line in run.audit.read_text(encoding="utf-8").splitlines()]
    plugin_events = [
        (line["event"], line["feature"], line["decision"])
        for line in lines
        if line["event"].startswith("plugin")
    ]
    # reviews and the refusal without --approve happen before any install is asked for
    assert plugin_events == [
        ("plugin-add", "counter", "install"),
        ("plugin-remove", "counter", "remove"),
    ]
    control_lines = [line["request"] for line in lines if line["event"] == "control"]
    assert control_lines.count("pluginadd") == 5  # four reviews, one install
    assert control_lines.count("pluginremove") == 2


def _add_on_a_terminal(app: str, bundle: str, answer: str) -> tuple[int, str]:
    """``capsule plugin add`` with its stdin and stdout on a terminal, answering its question;
    returns its exit status and what the terminal showed."""
    main, terminal = pty.openpty()
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "capsule", "plugin", "add", bundle, "--app", app],
            cwd=ROOT,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
        ) as add:
            try:
                seen = bytearray()
                read_terminal(main, "[y/N]", seen)
                os.write(main, answer.encode() + b"\n")
                status = add.wait(WAIT)
                read_terminal(main, "\n", seen)
                return status, seen.decode(errors="replace")
            finally:
                if add.poll() is None:
                    add.kill()
    finally:
        os.close(main)
        os.close(terminal)


def test_on_a_terminal_add_asks_before_approving(tmp_path: Path) -> None:
    bundle = str(counter(tmp_path))
    with running(tmp_path, plugins=PLUGINS) as run:
        status, shown = _add_on_a_terminal(run.name, bundle, "n")
        assert status == 1
        assert "+ fs:read,write:/state/?bytes=1048576" in shown
        assert "install counter 1.0.0 with this access? [y/N]" in shown
        assert "rerun with --approve" in shown
        assert capsule("plugin", "list", "--app", run.name).stdout == "no plugins installed\n"
        status, shown = _add_on_a_terminal(run.name, bundle, "y")
        assert status == 0, shown
        assert "counter: running" in shown
        called = capsule("call", "counter.count", '"a b"', "--app", run.name)
        assert called.stdout == "2\n"
