"""``start``, ``idle_stop`` and ``wake_on`` in [policy.NAME] of app.toml, and ``requires``
between eager and on-demand features."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule._cli._dot import render_dot
from capsule._manifest import check_app, load_app
from capsule._manifest._model import DEFAULT_START, StartPolicy
from tests.capsule.manifest_helpers import bad_policy_entry, make_app, one


def test_a_start_policy_is_read_with_units_and_defaults(tmp_path: Path) -> None:
    policy = (
        '[policy.a]\nstart = "on-demand"\nidle_stop = "2m"\nwake_on = ["notes.*"]\n'
        'subscribe = ["notes.*"]\n'
        '[policy.b]\nstart = "on-demand"\n'
        '[policy.c]\nstart = "on-demand"\nidle_stop = "never"\n'
        '[policy.d]\nstart = "eager"\n'
    )
    app = load_app(make_app(tmp_path, dict.fromkeys("abcde", ""), policy))
    start = app.manifest.start_policy
    assert start("a") == StartPolicy(on_demand=True, idle_stop=120.0, wake_on=("notes.*",))
    assert start("b") == StartPolicy(on_demand=True, idle_stop=300.0)
    assert start("c") == StartPolicy(on_demand=True, idle_stop=None)
    assert start("d") is DEFAULT_START
    assert start("e") is DEFAULT_START
    assert not DEFAULT_START.on_demand


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ('start = "lazy"', "policy.a.start", '"lazy" is not one of "eager", "on-demand"'),
        ("start = true", "policy.a.start", "found boolean true"),
        ('start = "on-demand"\nidle_stop = "5"', "policy.a.idle_stop", 'found string "5"'),
        ('start = "on-demand"\nidle_stop = 5', "policy.a.idle_stop", "found integer 5"),
        ('start = "on-demand"\nidle_stop = "10ms"', "policy.a.idle_stop", "at least 50ms"),
        ('start = "on-demand"\nwake_on = ["Notes Saved"]', "policy.a.wake_on[0]", "not a topic"),
        ('start = "on-demand"\nwake_on = "notes.*"', "policy.a.wake_on", "expected an array"),
        ('idle_stop = "5m"', "policy.a.idle_stop", 'add start = "on-demand"'),
        ('start = "eager"\nwake_on = ["a.b"]', "policy.a.wake_on", "on-demand feature only"),
        ('strat = "on-demand"', "policy.a.strat", 'did you mean "start"'),
    ],
)
def test_a_bad_start_policy_is_reported_with_file_line_and_key(
    tmp_path: Path, entry: str, key: str, fragment: str
) -> None:
    first, _, rest = entry.partition("\n")
    if rest:  # the key under test on line 6: the start line goes after it
        entry = f"{rest}\n{first}"
    bad_policy_entry(tmp_path, entry, key, fragment)


def test_an_eager_feature_cannot_require_an_on_demand_one(tmp_path: Path) -> None:
    app = make_app(
        tmp_path,
        {
            "eager": '[requires]\nfeatures = ["lazy"]\n',
            "lazy": '[requires]\nfeatures = ["base"]\n',
            "base": "",
        },
        '[policy.lazy]\nstart = "on-demand"\n[policy.base]\nstart = "on-demand"\n',
    )
    report = check_app(app)
    problem = one(report, "requires.features[0]", file="features/eager/capsule.toml")
    assert "an eager feature cannot require it" in problem.message
    assert "a call to it starts it" in problem.message
    assert len(report.problems) == 1  # on-demand may require on-demand


def test_a_wake_on_topic_must_be_one_it_may_subscribe_to(tmp_path: Path) -> None:
    policy = '[policy.a]\nstart = "on-demand"\nsubscribe = ["notes.*"]\n'
    policy += 'wake_on = ["notes.saved", "spell.checked"]\n'
    problem = one(check_app(make_app(tmp_path, {"a": ""}, policy)), "policy.a.wake_on")
    assert 'wakes on "spell.checked", which [policy.a] does not let it subscribe' in problem.message
    assert problem.line == 7


def test_plugins_cannot_start_on_demand(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"a": ""}, '[plugins]\nstart = "on-demand"\n')
    assert "plugins start eagerly" in one(check_app(app), "plugins.start").message


def test_the_graph_marks_on_demand_features(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"a": "", "b": ""}, '[policy.b]\nstart = "on-demand"\n')
    dot = render_dot(check_app(app))
    line_a = next(line for line in dot.splitlines() if '"feature:a" [' in line)
    line_b = next(line for line in dot.splitlines() if '"feature:b" [' in line)
    assert "on demand" not in line_a
    assert "(on demand)" in line_b
    assert "dashed" in line_b
