"""``capsule check`` shows how features are updated and what a plugin may be granted."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.capsule.manifest_helpers import make_app
from tests.capsule.test_cli_check import capsule


def _app(tmp_path: Path) -> Path:
    root = make_app(
        tmp_path,
        {"a": "", "b": "", "c": ""},
        '[volumes]\nwords = "words"\n'
        '[policy.a]\nupdate = { probation = "1m", crashes = 1, error_rate = 0.5 }\n'
        '[plugins]\ncall = ["a.*"]\nfs = [{ path = "/data/words", volume = "words" }]\n'
        'env = { MODE = "plugin" }\nupdate = { keep = "0s" }\n',
        extra={"words/.keep": ""},
    )
    toml = root / "features/b/capsule.toml"
    toml.write_text(toml.read_text().replace("[feature]\n", "[feature]\nforward_only = true\n"))
    return root


def test_check_shows_update_policies_forward_only_and_plugins(tmp_path: Path) -> None:
    result = capsule("check", str(_app(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    features = out[: out.index("\nplugins")]
    a, b, c = re.split(r"\n +\d\. ", features)[1:]
    assert (
        "update   probation 1m, keep 10m, drain 5s, queue 1024, state 16MiB\n"
        "                rolled back on 1 crash, error rate 0.5 over 20 calls or p99 3x the old\n"
        in a
    ), a
    assert "forward only" not in a
    assert "update   forward only: a failed update is stopped, not rolled back" in b, b
    assert "update" not in c, c  # the default is not shown
    tail = out[out.index("plugins may be granted at most:") :]
    assert tail.startswith(
        "plugins may be granted at most:\n  icc:call:a.*\n  fs:read:/data/words/\n"
        "  view /data/words <- volume words (ro)\n  env MODE\n  update probation 30s, keep 0s,"
        " drain 5s, queue 1024, state 16MiB\n         rolled back on 2 crashes,"
    ), tail


def test_check_without_plugins_table_says_a_plugin_gets_nothing(tmp_path: Path) -> None:
    out = capsule("check", str(make_app(tmp_path, {"a": ""}))).stdout
    assert (
        "\nplugins: no [plugins] table, so a plugin installed at run time is granted nothing\n"
        in out
    )


def test_check_json_has_update_policies_and_plugins(tmp_path: Path) -> None:
    result = capsule("check", "--format", "json", str(_app(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    features = {f["name"]: f for f in data["features"]}
    assert features["a"]["update"]["probation"] == 60.0
    assert features["a"]["update"]["crashes"] == 1
    assert features["c"]["update"]["probation"] == 30.0
    assert [f["forward_only"] for f in features.values()] == [False, True, False]
    plugins = data["plugins"]
    assert plugins["capabilities"] == ["icc:call:a.*", "fs:read:/data/words/"]
    assert plugins["fs"][0]["volume"] == "words"
    assert plugins["env"] == [{"name": "MODE", "from_host": None}]
    assert plugins["update"]["keep"] == 0.0
    bare = json.loads(
        capsule("check", "--format", "json", str(make_app(tmp_path / "n", {"a": ""}))).stdout
    )
    assert bare["plugins"] is None
