"""``update`` in [policy.NAME], ``forward_only`` in [feature], and [plugins] of app.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule._manifest import UpdatePolicy, check_app, load_app
from capsule._manifest._model import DEFAULT_UPDATE_POLICY, Policy
from capsule._tokens._caps import parse_capability
from capsule.errors import ConfigError
from tests.capsule.manifest_helpers import bad_policy_entry, make_app, one, only


def test_an_update_policy_is_read_with_units_and_defaults(tmp_path: Path) -> None:
    policy = (
        "[policy.a.update]\n"
        'probation = "1m"\nkeep = "2h"\ndrain = "250ms"\nqueue = 16\nstate_max = "1GiB"\n'
        "crashes = 1\nmin_calls = 5\nerror_rate = 1\np99_ratio = 1\n"
    )
    app = load_app(make_app(tmp_path, {"a": "", "b": ""}, policy))
    assert app.manifest.update_policy("a") == UpdatePolicy(
        probation=60.0,
        keep=7200.0,
        drain=0.25,
        queue=16,
        state_max=1 << 30,
        crashes=1,
        min_calls=5,
        error_rate=1.0,
        p99_ratio=1.0,
    )
    assert app.manifest.update_policy("b") is DEFAULT_UPDATE_POLICY
    assert (
        UpdatePolicy(
            probation=30.0,
            keep=600.0,
            drain=5.0,
            queue=1024,
            state_max=16 << 20,
            crashes=2,
            min_calls=20,
            error_rate=0.1,
            p99_ratio=3.0,
        )
        == DEFAULT_UPDATE_POLICY
    )


def test_zero_probation_keep_drain_and_state_are_allowed(tmp_path: Path) -> None:
    policy = '[policy.a]\nupdate = { probation = "0s", keep = "0s", drain = "0s", state_max = 0 }\n'
    update = load_app(make_app(tmp_path, {"a": ""}, policy)).manifest.update_policy("a")
    assert (update.probation, update.keep, update.drain, update.state_max) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ('update = { probation = "30" }', "policy.a.update.probation", 'found "30"'),
        ("update = { probation = 30 }", "policy.a.update.probation", 'write the unit: "30s"'),
        ('update = { keep = "-1s" }', "policy.a.update.keep", "expected a duration"),
        ('update = { drain = "5 s" }', "policy.a.update.drain", "expected a duration"),
        ("update = { queue = 0 }", "policy.a.update.queue", "from 1 to 65536"),
        ("update = { queue = 65537 }", "policy.a.update.queue", "from 1 to 65536"),
        ('update = { queue = "10" }', "policy.a.update.queue", 'found string "10"'),
        ('update = { state_max = "2GiB" }', "policy.a.update.state_max", "at most 1GiB"),
        ('update = { state_max = "16MB" }', "policy.a.update.state_max", '"16MiB"'),
        ("update = { crashes = 0 }", "policy.a.update.crashes", "from 1 to"),
        ("update = { min_calls = 0 }", "policy.a.update.min_calls", "from 1 to"),
        ("update = { error_rate = 0 }", "policy.a.update.error_rate", "more than 0 and at most 1"),
        (
            "update = { error_rate = 1.5 }",
            "policy.a.update.error_rate",
            "more than 0 and at most 1",
        ),
        ('update = { error_rate = "10%" }', "policy.a.update.error_rate", 'found string "10%"'),
        ("update = { p99_ratio = 0.5 }", "policy.a.update.p99_ratio", "from 1 to 1000"),
        ("update = { p99_ratio = true }", "policy.a.update.p99_ratio", "found boolean true"),
        ('update = { probaton = "1s" }', "policy.a.update.probaton", 'did you mean "probation"'),
        ('update = "30s"', "policy.a.update", "must be a table"),
    ],
)
def test_a_bad_update_policy_is_reported_with_file_line_and_key(
    tmp_path: Path, entry: str, key: str, fragment: str
) -> None:
    bad_policy_entry(tmp_path, entry, key, fragment)


@pytest.mark.parametrize(
    ("body", "key", "line"),
    [
        ('update = { probation = "1s" }\n', "feature.update", 5),
        ('[update]\nprobation = "1s"\n', "update", 5),
        ('[access]\nupdate = { keep = "0s" }\n', "access.update", 6),
    ],
)
def test_a_bundle_cannot_set_its_own_update_policy(
    tmp_path: Path, body: str, key: str, line: int
) -> None:
    problem = one(check_app(make_app(tmp_path, {"a": body})), key)
    assert problem.path.endswith("features/a/capsule.toml")
    assert problem.line == line
    assert "the app sets that in update of its [policy.NAME] table" in problem.message


def test_forward_only_is_read_from_the_feature_table(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"a": "", "b": ""})
    toml = app / "features/a/capsule.toml"
    toml.write_text(toml.read_text().replace("[feature]\n", "[feature]\nforward_only = true\n"))
    loaded = load_app(app)
    assert loaded.features["a"].forward_only is True
    assert loaded.features["b"].forward_only is False


@pytest.mark.parametrize(
    ("value", "fragment"),
    [('"true"', "write it without quotes: forward_only = true"), ("1", "found integer 1")],
)
def test_a_bad_forward_only_names_file_line_and_key(
    tmp_path: Path, value: str, fragment: str
) -> None:
    app = make_app(tmp_path, {"a": ""})
    toml = app / "features/a/capsule.toml"
    toml.write_text(toml.read_text() + f"forward_only = {value}\n")
    problem = only(check_app(app))
    assert problem.path.endswith("features/a/capsule.toml")
    assert (problem.key, problem.line) == ("feature.forward_only", 5)
    assert fragment in problem.message
    with pytest.raises(ConfigError) as raised:
        load_app(app)
    assert (raised.value.key, raised.value.line) == ("feature.forward_only", 5)


def test_the_plugins_table_is_read_like_a_policy(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": ""},
        '[volumes]\nwords = "volumes/words"\n'
        "[plugins]\n"
        'call = ["a.*"]\nsubscribe = ["editor.*"]\n'
        'fs = [{ path = "/data/words", volume = "words" }, '
        '{ path = "/state", mode = "private", quota = "1MiB" }]\n'
        'env = { MODE = "plugin" }\n'
        'update = { probation = "5s" }\n',
    )
    (root / "volumes/words").mkdir(parents=True)
    plugins = load_app(root).manifest.plugins
    assert plugins is not None
    assert [str(c) for c in plugins.capabilities()] == [
        "icc:call:a.*",
        "icc:subscribe:editor.*",
        "fs:read:/data/words/",
        "fs:read,write:/state/?bytes=1048576",
    ]
    assert [var.name for var in plugins.env] == ["MODE"]
    assert plugins.update.probation == 5.0
    assert load_app(make_app(tmp_path / "none", {"a": ""})).manifest.plugins is None


@pytest.mark.parametrize(
    ("table", "key", "line", "fragment"),
    [
        ('call = ["a."]', "plugins.call[0]", 5, 'call entry "a."'),
        ('fs = [{ path = "/w", volume = "nope" }]', "plugins.fs[0].volume", 5, 'volume "nope"'),
        ("mount = 1", "plugins.mount", 5, 'unknown key "mount" in [plugins]'),
        ("update = { crashes = 0 }", "plugins.update.crashes", 5, "from 1 to"),
    ],
)
def test_a_bad_plugins_table_names_file_line_and_key(
    tmp_path: Path, table: str, key: str, line: int, fragment: str
) -> None:
    root = make_app(tmp_path, {"a": ""}, f"[plugins]\n{table}\n")
    problem = one(check_app(root), key)
    assert problem.path.endswith("/app.toml")
    assert problem.line == line
    assert fragment in problem.message, problem.message
    with pytest.raises(ConfigError) as raised:
        load_app(root)
    assert (raised.value.key, raised.value.line) == (key, line)


def test_a_policy_lists_its_approvals_as_capabilities() -> None:
    policy = Policy(call=("a.b",), publish=("x.*",), net=("127.0.0.1:80",), listen=("[::1]:9",))
    assert policy.capabilities() == (
        parse_capability("icc:call:a.b"),
        parse_capability("icc:publish:x.*"),
        parse_capability("net:connect:127.0.0.1:80"),
        parse_capability("net:listen:[::1]:9"),
    )
