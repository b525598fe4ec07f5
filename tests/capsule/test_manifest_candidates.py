"""read_candidate: a new version or a plugin read against a loaded app, and its capability diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule._manifest import (
    App,
    CapabilityDiff,
    FeatureGrant,
    approval_needed,
    diff_grants,
    load_app,
    read_candidate,
)
from capsule._manifest._model import Limits
from capsule._tokens._caps import parse_capability
from capsule.errors import ConfigError, UpdateRefusedError
from tests.capsule.manifest_helpers import build, feature, make_app

SPELL = '[access]\ncall = ["dict.lookup"]\nfs = [{ path = "/data/words", mode = "ro" }]\n'
POLICIES = (
    '[volumes]\nwords = "words"\n'
    '[policy.spell]\ncall = ["dict.*"]\nfs = [{ path = "/data/words", volume = "words" }]\n'
    'net = ["127.0.0.1:80"]\n'
)


def _app(tmp_path: Path, policies: str = POLICIES) -> App:
    root = make_app(
        tmp_path / "app",
        {"dict": '[provides]\nservices = ["lookup", "check"]\n', "spell": SPELL},
        policies,
        extra={"words/.keep": ""},
    )
    return load_app(root)


def _bundle(tmp_path: Path, name: str, body: str, *, version: str = "2.0.0") -> Path:
    build(tmp_path / "next", feature(name, body, version=version))
    return tmp_path / "next" / "features" / name


def test_the_same_requests_change_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path)
    candidate = read_candidate(app, _bundle(tmp_path, "spell", SPELL), feature="spell")
    assert candidate.manifest.version == "2.0.0"
    assert candidate.manifest.root == tmp_path / "next/features/spell"
    assert candidate.grant == app.grants["spell"]
    assert candidate.diff == CapabilityDiff(
        kept=("icc:call:dict.lookup", "fs:read:/data/words/"), widens=False
    )
    assert not approval_needed(candidate.diff)
    assert candidate.diff.render() == "  icc:call:dict.lookup\n  fs:read:/data/words/"


def test_asking_for_less_narrows(tmp_path: Path) -> None:
    app = _app(tmp_path)
    body = '[access]\ncall = ["dict.lookup"]\n[limits]\nmemory = "128MiB"\n'
    candidate = read_candidate(app, _bundle(tmp_path, "spell", body), feature="spell")
    assert candidate.diff.removed == ("fs:read:/data/words/",)
    assert candidate.diff.added == ()
    assert candidate.grant.mounts == ()
    assert not candidate.diff.widens
    assert candidate.diff.render() == (
        "- fs:read:/data/words/\n  icc:call:dict.lookup\n~ limits.memory 256MiB -> 128MiB"
    )


def test_asking_for_more_that_the_policy_approves_widens(tmp_path: Path) -> None:
    app = _app(tmp_path)
    body = SPELL + 'net = ["127.0.0.1:80"]\n[limits]\npids = 128\n'
    candidate = read_candidate(app, _bundle(tmp_path, "spell", body), feature="spell")
    assert candidate.diff.added == ("net:connect:127.0.0.1:80",)
    assert candidate.diff.kept == ("icc:call:dict.lookup", "fs:read:/data/words/")
    assert candidate.diff.widens
    assert approval_needed(candidate.diff)
    assert candidate.grant.mounts[0].host == app.volumes["words"]
    assert "+ net:connect:127.0.0.1:80\n" in candidate.diff.render()
    assert candidate.diff.render().endswith("~ limits.pids 64 -> 128")


def test_a_raised_limit_alone_widens(tmp_path: Path) -> None:
    app = _app(tmp_path)
    body = SPELL + '[limits]\nmemory = "1GiB"\n'
    diff = read_candidate(app, _bundle(tmp_path, "spell", body), feature="spell").diff
    assert (diff.added, diff.removed) == ((), ())
    assert diff.widens
    assert "~ limits.memory 256MiB -> 1GiB" in diff.render()


def test_asking_for_more_than_the_policy_approves_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)
    body = SPELL + 'net = ["10.0.0.1:443"]\nlisten = ["127.0.0.1:8080"]\n'
    bundle = _bundle(tmp_path, "spell", body)
    with pytest.raises(UpdateRefusedError) as raised:
        read_candidate(app, bundle, feature="spell")
    error = raised.value
    assert error.feature == "spell"
    toml = f"{bundle}/capsule.toml"
    assert len(error.reasons) == 2
    assert error.reasons[0].startswith(f"{toml}:8 [access.net[0]] net ")
    assert "[policy.spell] in " in error.reasons[0]
    assert error.reasons[1].startswith(f"{toml}:9 [access.listen[0]] listen ")
    assert isinstance(error, PermissionError)
    assert str(error).startswith(
        "feature 'spell': refused, the app's policy does not approve these requests:\n  "
    )


def test_an_update_must_have_the_features_name(tmp_path: Path) -> None:
    app = _app(tmp_path)
    bundle = _bundle(tmp_path, "spelling", SPELL)
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, bundle, feature="spell")
    assert raised.value.path == f"{bundle}/capsule.toml"
    assert (raised.value.key, raised.value.line) == ("feature.name", 2)
    assert 'this bundle is feature "spelling", not "spell"' in raised.value.message


def test_a_broken_bundle_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    app = _app(tmp_path)
    bundle = _bundle(tmp_path, "spell", '[access]\ncall = ["dict.lookup"\n')
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, bundle, feature="spell")
    assert raised.value.path == f"{bundle}/capsule.toml"
    assert raised.value.line == 7  # the end of the file, where the array is still open
    assert "TOML syntax error: Unclosed array" in raised.value.message
    bad_value = _bundle(tmp_path, "spell", '[limits]\nmemory = "1MB"\n')
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, bad_value, feature="spell")
    assert (raised.value.key, raised.value.line) == ("limits.memory", 6)


def test_a_missing_bundle_or_feature_is_a_config_error(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with pytest.raises(ConfigError, match="does not exist") as raised:
        read_candidate(app, tmp_path / "nowhere", feature="spell")
    assert raised.value.path == str(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no capsule\.toml in bundle"):
        read_candidate(app, tmp_path / "empty", feature="spell")
    with pytest.raises(ConfigError, match="the app has no feature 'nope' to update"):
        read_candidate(app, _bundle(tmp_path, "nope", ""), feature="nope")
    with pytest.raises(TypeError):
        read_candidate(app, _bundle(tmp_path, "spell", SPELL))


def test_an_update_gets_the_checks_of_capsule_check(tmp_path: Path) -> None:
    app = _app(tmp_path)
    calls = _bundle(tmp_path, "spell", '[access]\ncall = ["dict.define"]\n')
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, calls, feature="spell")
    assert (raised.value.key, raised.value.line) == ("access.call[0]", 6)
    assert 'does not provide service "define"' in raised.value.message
    requires = _bundle(tmp_path, "spell", '[requires]\nfeatures = ["dicts"]\n')
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, requires, feature="spell")
    assert (raised.value.key, raised.value.line) == ("requires.features[0]", 6)
    assert 'did you mean "dict"' in raised.value.message


def test_an_update_that_closes_a_requires_cycle_is_refused(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app", {"a": '[requires]\nfeatures = ["b"]\n', "b": ""})
    app = load_app(root)
    bundle = _bundle(tmp_path, "b", '[requires]\nfeatures = ["a"]\n')
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, bundle, feature="b")
    assert raised.value.message.startswith("requires cycle: b -> a -> b;")
    assert (raised.value.path, raised.value.line) == (f"{bundle}/capsule.toml", 6)


def test_a_plugin_without_a_plugins_table_may_ask_for_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path)
    candidate = read_candidate(app, _bundle(tmp_path, "count", ""), plugin=True)
    assert candidate.grant == FeatureGrant(feature="count")
    assert candidate.diff.added == candidate.diff.removed == ()
    assert not candidate.diff.widens
    assert candidate.diff.render().startswith("+ limits.memory 256MiB\n+ limits.pids 64\n")
    asks = _bundle(tmp_path, "count", '[access]\nsubscribe = ["spell.*"]\n')
    with pytest.raises(UpdateRefusedError) as raised:
        read_candidate(app, asks, plugin=True)
    (reason,) = raised.value.reasons
    assert reason.startswith(f"{asks}/capsule.toml:6 [access.subscribe[0]] ")
    assert "has no [plugins] table, so count is granted nothing" in reason


def test_a_plugin_is_granted_what_plugins_approves(tmp_path: Path) -> None:
    policies = POLICIES + '[plugins]\ncall = ["dict.lookup"]\nenv = { MODE = "plugin" }\n'
    app = _app(tmp_path, policies)
    body = '[access]\ncall = ["dict.lookup"]\n'
    candidate = read_candidate(app, _bundle(tmp_path, "count", body), plugin=True)
    assert candidate.grant.capabilities == (parse_capability("icc:call:dict.lookup"),)
    assert [var.name for var in candidate.grant.env] == ["MODE"]
    assert candidate.diff.added == ("icc:call:dict.lookup",)
    assert candidate.diff.widens
    wider = _bundle(tmp_path, "count", '[access]\ncall = ["dict.check"]\n')
    with pytest.raises(UpdateRefusedError) as raised:
        read_candidate(app, wider, plugin=True)
    assert "[plugins] in " in raised.value.reasons[0]
    assert "does not cover it" in raised.value.reasons[0]


def test_a_plugin_cannot_take_an_app_features_name(tmp_path: Path) -> None:
    app = _app(tmp_path)
    bundle = _bundle(tmp_path, "dict", "")
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, bundle, plugin=True)
    assert (raised.value.path, raised.value.key) == (f"{bundle}/capsule.toml", "feature.name")
    assert 'a plugin cannot be named "dict"' in raised.value.message


def test_a_plugin_may_call_features_the_app_does_not_know(tmp_path: Path) -> None:
    policies = POLICIES + '[plugins]\ncall = ["other.*"]\n'
    app = _app(tmp_path, policies)
    body = '[access]\ncall = ["other.run"]\n'
    candidate = read_candidate(app, _bundle(tmp_path, "count", body), plugin=True)
    assert candidate.diff.added == ("icc:call:other.run",)


def test_an_update_of_a_plugin_is_granted_from_plugins(tmp_path: Path) -> None:
    policies = POLICIES + '[plugins]\ncall = ["dict.*"]\n'
    app = _app(tmp_path, policies)
    body = '[access]\ncall = ["dict.check"]\n'
    candidate = read_candidate(app, _bundle(tmp_path, "count", body), feature="count", plugin=True)
    assert candidate.diff.added == ("icc:call:dict.check",)
    with pytest.raises(ConfigError, match='this bundle is feature "count", not "other"'):
        read_candidate(app, _bundle(tmp_path, "count", body), feature="other", plugin=True)


def test_a_request_under_a_running_grant_does_not_widen() -> None:
    before = FeatureGrant(feature="a", capabilities=(parse_capability("icc:call:b.*"),))
    after = FeatureGrant(feature="a", capabilities=(parse_capability("icc:call:b.lookup"),))
    diff = diff_grants(before, after)
    assert (diff.added, diff.removed, diff.widens) == (
        ("icc:call:b.lookup",),
        ("icc:call:b.*",),
        False,
    )
    assert diff_grants(after, before).widens
    raised = diff_grants(before, before, before_limits=Limits(), after_limits=Limits(cpu=2))
    assert raised.widens
    assert [str(change) for change in raised.limits] == ["limits.cpu 1 -> 2"]
    lowered = diff_grants(before, before, before_limits=Limits(), after_limits=Limits(cpu=0.5))
    assert not lowered.widens


def test_a_broken_request_is_a_config_error_even_when_it_is_also_unapproved(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path)
    bundle = _bundle(tmp_path, "spell", '[access]\ncall = ["other.run"]\n')
    with pytest.raises(ConfigError) as raised:
        read_candidate(app, bundle, feature="spell")
    assert not isinstance(raised.value, UpdateRefusedError)
    assert (raised.value.key, raised.value.line) == ("access.call[0]", 6)
    assert 'the app has no feature "other"' in raised.value.message
    assert "(and 1 more error)" in raised.value.message  # the refusal is among its problems
