"""``limits`` in ``[policy.NAME]``: what an app lets a feature make the broker hold, checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule._manifest import check_app, load_app
from capsule._manifest._model import DEFAULT_BROKER_LIMITS, BrokerLimits
from tests.capsule.manifest_helpers import bad_policy_entry, make_app, one


def test_broker_limits_have_defaults_and_are_set_per_feature(tmp_path: Path) -> None:
    policy = (
        "[policy.a]\n"
        'limits = { subscriptions = 16, delegations = 0, queue = "256KiB", lagged = "close" }\n'
    )
    app = load_app(make_app(tmp_path, {"a": "", "b": ""}, policy))
    assert app.manifest.policies["a"].limits == BrokerLimits(
        subscriptions=16, delegations=0, queue=256 << 10, lagged="close"
    )
    assert (
        BrokerLimits(subscriptions=1024, delegations=64, queue=4 << 20, lagged="drop")
        == DEFAULT_BROKER_LIMITS
    )
    assert "b" not in app.manifest.policies  # no policy table: the defaults (see the broker)


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ("limits = { subscriptions = 0 }", "policy.a.limits.subscriptions", "from 1 to 1048576"),
        ("limits = { subscriptions = true }", "policy.a.limits.subscriptions", "integer"),
        ("limits = { delegations = -1 }", "policy.a.limits.delegations", "from 0 to 65536"),
        ('limits = { queue = "1KiB" }', "policy.a.limits.queue", "from 64KiB to 1GiB"),
        ('limits = { queue = "4MB" }', "policy.a.limits.queue", "4MiB"),
        ('limits = { lagged = "block" }', "policy.a.limits.lagged", '"drop", "close"'),
        ("limits = { memory = 1 }", "policy.a.limits.memory", "subscriptions"),
    ],
)
def test_bad_broker_limits_are_reported_with_file_line_and_key(
    tmp_path: Path, entry: str, key: str, fragment: str
) -> None:
    bad_policy_entry(tmp_path, entry, key, fragment)


def test_the_audit_logs_cap_and_a_features_share_are_set_in_the_app_table(
    tmp_path: Path,
) -> None:
    root = make_app(tmp_path, {"a": ""}, 'audit_max = "16MiB"\naudit_share = 0.1\n')
    manifest = load_app(root).manifest
    assert (manifest.audit_max, manifest.audit_share) == (16 << 20, 0.1)
    default = load_app(make_app(tmp_path / "d", {"a": ""})).manifest
    assert (default.audit_max, default.audit_share) == (None, None)


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ('audit_max = "64KiB"', "app.audit_max", "at least 320KiB"),
        ('audit_max = "64MB"', "app.audit_max", "64MiB"),
        ("audit_share = 0", "app.audit_share", "more than 0 and at most 1"),
        ("audit_share = 2", "app.audit_share", "more than 0 and at most 1"),
    ],
)
def test_a_bad_audit_budget_is_reported_with_file_line_and_key(
    tmp_path: Path, entry: str, key: str, fragment: str
) -> None:
    root = make_app(tmp_path, {"a": ""}, f"{entry}\n")
    problem = one(check_app(root), key)
    assert problem.path.endswith("/app.toml")
    assert problem.line == 4
    assert fragment in problem.message, problem.message
