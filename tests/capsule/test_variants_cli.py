"""``capsule variants set|status|promote|abort`` and the variant rows of ``capsule ps``,
against a real ``capsule run``, each command in its own subprocess as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.capsule.cli_run_helpers import capsule, leftovers_of, running
from tests.capsule.test_update_cli import _bundle, _ok


def test_variants_set_status_promote_and_abort_through_the_control_socket(
    tmp_path: Path,
) -> None:
    with running(tmp_path) as run:
        app = ("--app", run.name)
        v2 = _bundle(run.app_dir, tmp_path / "bundles", "2.0.0")
        table = _ok("variants", "set", "spare", "1.0.0=80", f"{v2}=20", *app)
        rows = [line.split()[:4] for line in table.splitlines()[2:4]]
        assert rows == [
            ["1.0.0", "control", "80.00%", "running"],
            ["2.0.0", "candidate", "20.00%", "running"],
        ]
        ramped = json.loads(
            _ok("variants", "set", "spare", "1.0.0=50", "2.0.0=50", "--format", "json", *app)
        )
        shares = {v["version"]: v["share"] for v in ramped["status"]["variants"]}
        assert shares == {"1.0.0": 50.0, "2.0.0": 50.0}
        for _ in range(10):
            _ok("call", "echo.ping", "{}", *app)  # keyed by its caller: echo
        status = _ok("variants", "status", "spare", *app)
        assert "2.0.0 - control: error rate" in status
        ps = _ok("ps", *app)
        assert "variants of spare: sticky=caller" in ps
        bad = capsule("variants", "set", "spare", "1.0.0=90", "2.0.0=20", *app)
        assert bad.returncode == 1
        assert "the shares must add up to 100" in bad.stderr
        kept = _ok("variants", "promote", "spare", "1.0.0", *app)
        assert kept.strip() == "spare: runs no variants"
        assert _ok("variants", "status", "spare", *app).strip() == "spare: runs no variants"
        shadow = _ok("variants", "set", "--shadow", "spare", "1.0.0=0", f"{v2}=100", *app)
        assert "sticky=caller shadow" in shadow
        assert shadow.splitlines()[3].split()[:2] == ["2.0.0", "shadow"]
        left = _ok("variants", "set", "--no-shadow", "spare", "1.0.0=0", "2.0.0=100", *app)
        assert "shadow" not in left.splitlines()[0]
        assert left.splitlines()[3].split()[:2] == ["2.0.0", "candidate"]
        aborted = _ok("variants", "abort", "spare", *app)
        assert "(aborted by hand)" in aborted
        assert _ok("call", "echo.ping", "{}", *app).strip() == '"pong"'
        control = run.control
    assert control is not None
    assert leftovers_of(control) == []
    lines = [json.loads(line) for line in run.audit.read_text(encoding="utf-8").splitlines()]
    events = [line["event"] for line in lines if line["event"].startswith("variants-")]
    assert events == ["variants-set"] * 2 + ["variants-promote"] + ["variants-set"] * 2 + [
        "variants-abort"
    ]
