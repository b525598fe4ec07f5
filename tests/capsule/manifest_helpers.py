"""Builders for app and feature directories in tmp_path, and look-ups of reported problems."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from capsule._manifest import CheckReport, Problem, Severity, check_app, load_app
from capsule.errors import ConfigError

ENTRY_MODULE = '"""A feature."""\n\nfeature = object()\n'


def build(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (relative path -> text, dedented) under ``root``; return ``root``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


def feature_toml(name: str, body: str = "", *, version: str = "1.0.0") -> str:
    """A valid capsule.toml for ``name`` (entry ``<name>:feature``) plus ``body``."""
    module = name.replace("-", "_")
    head = f'[feature]\nname = "{name}"\nversion = "{version}"\nentry = "{module}:feature"\n'
    return head + textwrap.dedent(body)


def feature(name: str, body: str = "", *, version: str = "1.0.0") -> dict[str, str]:
    """The files of bundle ``features/<name>``: capsule.toml and its entry module."""
    module = name.replace("-", "_")
    return {
        f"features/{name}/capsule.toml": feature_toml(name, body, version=version),
        f"features/{name}/{module}.py": ENTRY_MODULE,
    }


def app_toml(names: Iterable[str], body: str = "", *, name: str = "demo") -> str:
    listed = ", ".join(f'"features/{n}"' for n in names)
    return f'[app]\nname = "{name}"\nfeatures = [{listed}]\n' + textwrap.dedent(body)


def make_app(
    root: Path,
    features: Mapping[str, str],
    policies: str = "",
    *,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """An app with one bundle per ``features`` item (name -> capsule.toml body)."""
    files: dict[str, str] = {"app.toml": app_toml(features, policies)}
    for name, body in features.items():
        files.update(feature(name, body))
    files.update(extra or {})
    return build(root, files)


def problems(report: CheckReport, key: str, *, file: str | None = None) -> list[Problem]:
    """The problems at ``key`` (and in a file whose path ends with ``file``)."""
    return [p for p in report.problems if p.key == key and (file is None or p.path.endswith(file))]


def one(report: CheckReport, key: str, *, file: str | None = None) -> Problem:
    """The single problem at ``key``; fails listing everything reported otherwise."""
    found = problems(report, key, file=file)
    assert len(found) == 1, "\n".join(str(p) for p in report.problems) or "no problems"
    return found[0]


def only(report: CheckReport) -> Problem:
    """The one problem of a report that must have exactly one."""
    assert len(report.problems) == 1, "\n".join(str(p) for p in report.problems) or "no problems"
    return report.problems[0]


def is_error(problem: Problem) -> bool:
    return problem.severity is Severity.ERROR


def bad_policy_entry(root: Path, entry: str, key: str, fragment: str) -> CheckReport:
    """Check an app whose ``[policy.a]`` holds ``entry`` on line 6 of app.toml: one problem
    at ``key`` with ``fragment`` in its message, and load_app refuses it at that key and
    line. Returns the check's report (for what else the caller asserts)."""
    app = make_app(root, {"a": ""}, f'[policy.a]\ncall = []\n{entry}\nsubscribe = ["x.*"]\n')
    report = check_app(app)
    problem = one(report, key)
    assert problem.path.endswith("/app.toml")
    assert problem.line == 6
    assert fragment in problem.message, problem.message
    with pytest.raises(ConfigError) as raised:
        load_app(app)
    assert (raised.value.key, raised.value.line) == (key, 6)
    return report
