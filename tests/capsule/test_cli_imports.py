"""What ``import capsule`` and the command line load: each command imports what it needs, and
``capsule --help`` none of the heavy modules (the supervisor, trio, pyfuse3, structlog).

Modules are checked in a fresh interpreter, never timed: the benchmark (benchmarks/cli.py)
measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import capsule
from tests.capsule.cli_run_helpers import ROOT, Run, running, unique_name

#: what the supervisor, the spawn path, the broker and the manifest bring with them
HEAVY = (
    "anyio",
    "capsule._broker._broker",
    "capsule._manifest",
    "capsule._spawn._client",
    "capsule._supervisor._supervisor",
    "capsule._tokens._authority",
    "cryptography",
    "fusefs",
    "pyfuse3",
    "rich",
    "structlog",
    "trio",
)
#: `capsule --help` parses arguments only: not even the control protocol's codec
NOT_FOR_HELP = (*HEAVY, "capsule._control._client", "msgspec")

_CLI = """
import json, sys
from capsule._cli._main import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def _cli_modules(tmp_path: Path, *argv: str) -> tuple[object, set[str]]:
    """The exit status of ``capsule ARGV`` and the modules loaded once it returned."""
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _CLI, str(out), *argv],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    found = json.loads(out.read_text())
    return found["code"], set(found["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


@pytest.mark.parametrize(
    "argv",
    [("--help",), ("--version",), ("ps", "--help"), ("run", "--help"), ("token", "mint", "-h")],
)
def test_help_imports_no_heavy_module(tmp_path: Path, argv: tuple[str, ...]) -> None:
    code, modules = _cli_modules(tmp_path, *argv)
    assert code == 0
    assert _loaded(modules, NOT_FOR_HELP) == []


def test_ps_without_a_running_app_imports_no_heavy_module(tmp_path: Path) -> None:
    code, modules = _cli_modules(tmp_path, "ps", "--app", unique_name())
    assert code == 1  # no such app
    assert _loaded(modules, HEAVY) == []
    assert "capsule._control._client" in modules  # it did look for the app


@pytest.fixture(scope="module")
def app_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with running(tmp_path_factory.mktemp("run")) as run:
        yield run


def test_ps_of_a_running_app_imports_no_heavy_module(tmp_path: Path, app_run: Run) -> None:
    code, modules = _cli_modules(tmp_path, "ps", "--app", app_run.name)
    assert code == 0
    assert _loaded(modules, HEAVY) == []


def test_a_command_imports_what_it_runs(tmp_path: Path) -> None:
    """The lazy handlers do import their module: ``doctor`` probes the sandbox."""
    code, modules = _cli_modules(tmp_path, "doctor", "--format", "json")
    assert code in {0, 1}
    assert "capsule._cli._doctor_report" in modules
    assert "capsule._sandbox._isolation" in modules


_IMPORT = """
import json, sys
import capsule
before = sorted(sys.modules)
handle = capsule.FeatureHandle.__module__
names = {n: getattr(getattr(capsule, n), "__module__", None) for n in capsule.__all__}
json.dump({"before": before, "handle": handle, "names": names, "dir": dir(capsule)}, sys.stdout)
"""


def test_import_capsule_loads_the_errors_only_and_the_rest_on_first_use() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    found = json.loads(result.stdout)
    assert _loaded(set(found["before"]), NOT_FOR_HELP) == []
    # reaching one supervisor name publishes the others of its group: the class a value
    # of it belongs to shows `capsule` even when it was not asked for by name first
    assert found["handle"] == "capsule"
    public = {n: m for n, m in found["names"].items() if m is not None and n != "__version__"}
    assert set(public.values()) <= {"capsule", "capsule.errors"}
    assert set(capsule.__all__) <= set(found["dir"])


def test_an_unknown_name_of_capsule_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Supervisr'"):
        _ = capsule.Supervisr  # type: ignore[attr-defined]
    assert capsule.Supervisor.__module__ == "capsule"
