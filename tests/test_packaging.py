"""The wheel built from this tree ships what an installed capsule needs.

Built once per test run with pip (hatchling is the backend, as pyproject.toml says).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")  # the backend is here: no index needed
    result = subprocess.run(
        [*command, str(ROOT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = sorted(out.glob("capsule_rt-*.whl"))
    assert len(built) == 1, sorted(p.name for p in out.iterdir())
    return built[0]


def test_the_wheel_marks_both_packages_typed(wheel: Path) -> None:
    """PEP 561: without py.typed, mypy ignores the annotations of an installed package."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"capsule/py.typed", "fusefs/py.typed"} <= names, sorted(names)[:20]


def test_the_wheel_holds_the_packages_and_nothing_of_the_repository_beside_them(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {"capsule", "fusefs"} <= tops
    assert not tops & {"tests", "benchmarks", "demos", "docs"}, sorted(tops)
