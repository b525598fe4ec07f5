"""``variants`` in [policy.NAME] of app.toml: how versions of a feature run side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule._manifest import load_app
from capsule._manifest._model import DEFAULT_VARIANT_POLICY, VariantPolicy
from tests.capsule.manifest_helpers import bad_policy_entry, make_app
from tests.capsule.test_cli_check import capsule


def test_a_variants_policy_is_read_and_defaults_apply(tmp_path: Path) -> None:
    policy = (
        '[policy.a]\nvariants = { sticky = "payload.user_id", storage = "shared" }\n'
        "[policy.c]\nvariants = { shadow = true }\n"
    )
    app = load_app(make_app(tmp_path, {"a": "", "b": "", "c": ""}, policy))
    assert app.manifest.variant_policy("a") == VariantPolicy(
        sticky="payload.user_id", shadow=False, storage="shared"
    )
    assert app.manifest.variant_policy("c") == VariantPolicy(
        sticky="caller", shadow=True, storage="own"
    )
    assert app.manifest.variant_policy("b") is DEFAULT_VARIANT_POLICY
    assert VariantPolicy(sticky="caller", shadow=False, storage="own") == DEFAULT_VARIANT_POLICY


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ('variants = { sticky = "user_id" }', "policy.a.variants.sticky", '"payload.FIELD"'),
        ('variants = { sticky = "payload." }', "policy.a.variants.sticky", 'not "caller"'),
        ('variants = { shadow = "yes" }', "policy.a.variants.shadow", "expected true or false"),
        ('variants = { storage = "private" }', "policy.a.variants.storage", '"own", "shared"'),
        ('variants = { stickey = "caller" }', "policy.a.variants.stickey", 'did you mean "sticky"'),
        ('variants = "caller"', "policy.a.variants", "must be a table"),
        (
            'variants = { shadow = true, storage = "shared" }',
            "policy.a.variants.storage",
            "a shadow variant cannot share the private storage",
        ),
    ],
)
def test_a_bad_variants_policy_is_reported_with_file_line_and_key(
    tmp_path: Path, entry: str, key: str, fragment: str
) -> None:
    bad_policy_entry(tmp_path, entry, key, fragment)


def test_check_shows_a_variants_policy_that_is_not_the_default(tmp_path: Path) -> None:
    policy = '[policy.a]\nvariants = { sticky = "payload.user", shadow = true }\n'
    result = capsule("check", str(make_app(tmp_path, {"a": "", "b": ""}, policy)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("variants ") == 1
    assert "variants keyed by payload.user, shadow, storage own" in result.stdout
