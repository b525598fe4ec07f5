"""``env`` in ``[policy.NAME]``: the environment variables an app sets for a feature, checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsule._environ import MINIMAL
from capsule._manifest import EnvVar, check_app, load_app
from capsule._manifest._env import feature_environments
from capsule.errors import ConfigError
from tests.capsule.manifest_helpers import bad_policy_entry, make_app, one, only
from tests.capsule.test_cli_check import capsule

_ENV = 'env = { LOG_LEVEL = "debug", API_KEY = { from_host = "OPENAI_API_KEY" } }\n'


def test_env_entries_are_granted_to_their_feature_only(tmp_path: Path) -> None:
    root = make_app(tmp_path, {"a": "", "b": ""}, f"[policy.a]\n{_ENV}")
    app = load_app(root)
    assert app.grants["a"].env == (
        EnvVar(name="LOG_LEVEL", value="debug"),
        EnvVar(name="API_KEY", from_host="OPENAI_API_KEY"),
    )
    assert app.manifest.policies["a"].env == app.grants["a"].env
    assert app.grants["b"].env == ()
    assert "debug" not in repr(app.grants["a"])  # a literal may be a secret: kept out of logs


def test_env_as_a_table_of_its_own(tmp_path: Path) -> None:
    policy = '[policy.a.env]\nLOG_LEVEL = "debug"\nEMPTY = ""\n'
    app = load_app(make_app(tmp_path, {"a": ""}, policy))
    assert app.grants["a"].env == (
        EnvVar(name="LOG_LEVEL", value="debug"),
        EnvVar(name="EMPTY", value=""),
    )


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ('env = { "1ST" = "x" }', "policy.a.env.1ST", "not a valid environment variable name"),
        ('env = { my-var = "x" }', "policy.a.env.my-var", "not a valid environment variable"),
        ('env = { "A=B" = "x" }', 'policy.a.env."A=B"', "not a valid environment variable name"),
        ('env = { "A\\u0000" = "x" }', 'policy.a.env."A\x00"', "not a valid environment"),
        ('env = { PATH = "/bin" }', "policy.a.env.PATH", '"PATH" is set by capsule itself'),
        ('env = { LC_ALL = "C" }', "policy.a.env.LC_ALL", "reserved: LC_ALL, LC_CTYPE, PATH"),
        ('env = { CAPSULE_X = "1" }', "policy.a.env.CAPSULE_X", "reserved for capsule"),
        ('env = { A = "x\\u0000y" }', "policy.a.env.A", "NUL character"),
        ("env = { PORT = 8080 }", "policy.a.env.PORT", 'write it as a string: PORT = "8080"'),
        ("env = { ON = true }", "policy.a.env.ON", 'write it as a string: ON = "true"'),
        ('env = { A = ["x"] }', "policy.a.env.A", "expected a string or { from_host"),
        (
            "env = { A = {} }",
            "policy.a.env.A.from_host",
            "missing required key policy.a.env.A.from_host",
        ),
        (
            'env = { A = { from_host = "BAD-NAME" } }',
            "policy.a.env.A.from_host",
            'from_host "BAD-NAME" is not a valid environment variable name',
        ),
        (
            'env = { A = { from_hots = "X" } }',
            "policy.a.env.A.from_hots",
            '(did you mean "from_host"?)',
        ),
        ('env = "LOG_LEVEL=debug"', "policy.a.env", "env must be a table of NAME = value"),
    ],
)
def test_bad_env_entries_are_reported_with_file_line_and_key(
    tmp_path: Path, entry: str, key: str, fragment: str
) -> None:
    report = bad_policy_entry(tmp_path, entry, key, fragment)
    assert report.grants["a"].env == ()


def test_a_feature_cannot_ask_for_environment_variables(tmp_path: Path) -> None:
    root = make_app(tmp_path, {"a": '[access]\nenv = { API_KEY = "x" }\n'}, "[policy.a]\n")
    problem = only(check_app(root))
    assert problem.path.endswith("features/a/capsule.toml")
    assert (problem.key, problem.line) == ("access.env", 6)
    assert "a feature cannot set its own environment" in problem.message


def test_each_feature_gets_the_minimal_environment_and_its_own_entries(tmp_path: Path) -> None:
    app = load_app(make_app(tmp_path, {"a": "", "b": ""}, f"[policy.a]\n{_ENV}"))
    host = {"OPENAI_API_KEY": "sk-123", "HOME": "/root", "LOG_LEVEL": "host"}
    environments = feature_environments(app, host)
    assert dict(environments["a"]) == {**MINIMAL, "LOG_LEVEL": "debug", "API_KEY": "sk-123"}
    assert dict(environments["b"]) == dict(MINIMAL)


def test_an_unset_host_variable_is_refused_with_file_line_and_key(tmp_path: Path) -> None:
    app = load_app(make_app(tmp_path, {"a": ""}, f"[policy.a]\n\n{_ENV}"))
    with pytest.raises(ConfigError) as raised:
        feature_environments(app, {"LOG_LEVEL": "x"})
    error = raised.value
    assert error.path == str(tmp_path / "app.toml")
    assert (error.key, error.line) == ("policy.a.env.API_KEY", 6)
    assert "OPENAI_API_KEY, which is not set" in error.message


def test_capsule_check_prints_bad_env_entries(tmp_path: Path) -> None:
    make_app(tmp_path, {"a": ""}, '[policy.a]\nenv = { PATH = "/opt/bin" }\n')
    result = capsule("check", ".", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        'error   ./app.toml:5 [policy.a.env.PATH] "PATH" is set by capsule itself and cannot '
        "be changed; reserved: LC_ALL, LC_CTYPE, PATH"
    ) in result.stdout.splitlines()


def test_capsule_check_shows_each_features_variables_but_not_literal_values(
    tmp_path: Path,
) -> None:
    make_app(tmp_path, {"a": ""}, f"[policy.a]\n{_ENV}")
    shown = capsule("check", ".", cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    text = shown.stdout
    assert "       env      LOG_LEVEL, API_KEY <- host OPENAI_API_KEY\n" in text
    assert "debug" not in text
    as_json = capsule("check", "--format", "json", ".", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    listed = as_json.stdout
    assert json.loads(listed)["features"][0]["env"] == [
        {"name": "LOG_LEVEL", "from_host": None},
        {"name": "API_KEY", "from_host": "OPENAI_API_KEY"},
    ]


def test_values_too_big_for_an_environment_are_refused(tmp_path: Path) -> None:
    big = "x" * (128 * 1024)
    report = check_app(
        make_app(tmp_path / "literal", {"a": ""}, f'[policy.a]\nenv = {{ A = "{big}" }}\n')
    )
    assert "more than 131072 bytes" in one(report, "policy.a.env.A").message
    names = ", ".join(f'V{i} = {{ from_host = "BIG" }}' for i in range(5))
    app = load_app(make_app(tmp_path / "host", {"a": ""}, f"[policy.a]\nenv = {{ {names} }}\n"))
    with pytest.raises(ConfigError) as raised:
        feature_environments(app, {"BIG": big})
    assert (raised.value.key, raised.value.line) == ("policy.a.env.V0", 5)
    with pytest.raises(ConfigError) as raised:
        feature_environments(app, {"BIG": "x" * (120 * 1024)})
    assert (raised.value.key, raised.value.line) == ("policy.a.env", 5)
    assert "more than 524288 bytes" in raised.value.message
