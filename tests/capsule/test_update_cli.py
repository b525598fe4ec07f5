"""``capsule update``, ``rollback``, ``history`` and ``ps`` against a real ``capsule run``,
each command in its own subprocess as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.capsule.cli_run_helpers import capsule, leftovers_of, running

SPARE_2 = '''"""spare, version 2.0.0: the same services, and the count handed over by 1.0.0."""

from capsule.feature import Feature

feature = Feature()
state = {"pings": 0, "from": None}


@feature.service("ping")
async def ping(ctx, request):
    state["pings"] += 1
    return f"pong from 2.0.0 ({state['from']})"


@feature.service("other")
async def other(ctx, request):
    return "never granted to echo"


@feature.import_state
async def take(ctx, from_version, data):
    state["from"] = f"{from_version} handed over {len(data)} bytes"
'''


def _bundle(app_dir: Path, root: Path, version: str, *, access: str = "") -> Path:
    """A copy of ``spare``'s bundle at ``version``, with SPARE_2 as its code."""
    bundle = root / f"spare-{version}"
    bundle.mkdir(parents=True)
    manifest = (app_dir / "features" / "spare" / "capsule.toml").read_text(encoding="utf-8")
    manifest = manifest.replace('version = "1.0.0"', f'version = "{version}"')
    (bundle / "capsule.toml").write_text(manifest + access, encoding="utf-8")
    (bundle / "inline.py").write_text(SPARE_2, encoding="utf-8")
    return bundle


def _ok(*args: str) -> str:
    result = capsule(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_update_rollback_history_and_ps_through_the_control_socket(tmp_path: Path) -> None:
    with running(tmp_path) as run:
        app = ("--app", run.name)
        v2 = _bundle(run.app_dir, tmp_path / "bundles", "2.0.0")
        dry = _ok("update", "spare", str(v2), "--dry-run", *app)
        assert "spare: 1.0.0 -> 2.0.0 (dry run)" in dry
        assert "- start 2.0.0 beside 1.0.0" in dry
        assert "pong from 2.0.0" not in _ok("call", "echo.ping", "{}", *app)

        done = _ok("update", "spare", str(v2), *app)
        assert done.startswith("spare: updated 1.0.0 -> 2.0.0\n")
        assert "calls held " in done
        # a call from another container reaches the new version
        assert _ok("call", "echo.ping", "{}", *app).strip() == (
            '"pong from 2.0.0 (None)"'  # 1.0.0 has no export_state: nothing handed over
        )
        ps = json.loads(_ok("ps", "--format", "json", *app))
        spare = next(f for f in ps["features"] if f["name"] == "spare")
        assert (spare["version"], spare["update"]) == ("2.0.0", "1.0.0 -> 2.0.0 (probation)")
        table = _ok("ps", *app)
        assert "1.0.0 -> 2.0.0 (probation)" in table

        back = _ok("rollback", "spare", *app)
        assert back.startswith("spare: rolled back 2.0.0 -> 1.0.0\n")
        assert _ok("call", "echo.ping", "{}", *app).strip() == '"pong"'
        history = json.loads(_ok("history", "spare", "--format", "json", *app))
        assert [(r["event"], r["version"]) for r in history] == [
            ("started", "1.0.0"),
            ("rolled-back", "1.0.0"),
        ]
        assert "rolled back by hand" in _ok("history", "spare", *app)

        refused = capsule(
            "update",
            "spare",
            str(
                _bundle(
                    run.app_dir,
                    tmp_path / "bundles",
                    "3.0.0",
                    access='\n[access]\ncall = ["echo.echo"]\n',
                )
            ),
            *app,
        )
        assert refused.returncode == 1
        assert "capsule.toml" in refused.stderr
        assert "echo.echo" in refused.stderr
        missing = capsule("update", "spare", str(tmp_path / "nowhere"), *app)
        assert missing.returncode == 1
        assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
        control = run.control
    assert control is not None
    assert leftovers_of(control) == []
