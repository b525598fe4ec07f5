"""Every command and Python example shown in the docs runs, and does what the docs say.

Shell examples live in ```console blocks as `$ command` lines. Each Markdown file's
blocks run in order, in one shell, in a scratch directory holding a copy of demos/.
A trailing `# exits N` comment gives the expected exit status (0 otherwise).
Each file's ```python blocks run in order, in one fresh interpreter, in such a directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
_EXITS = re.compile(r"#\s*exits\s+(\d+)\s*$")
_PYTHON = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
BASH = shutil.which("bash") or "/bin/bash"


def commands(path: Path) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for block in _BLOCK.findall(path.read_text("utf-8")):
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:]
                match = _EXITS.search(command)
                expected = int(match.group(1)) if match else 0
                found.append((_EXITS.sub("", command).rstrip(), expected))
    return found


DOCUMENTED = [p for p in DOCS if commands(p)]


def test_the_docs_show_commands() -> None:
    assert DOCUMENTED, "no ```console blocks found in README.md or docs/"


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_run(path: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "demos", tmp_path / "demos")
    script = ["set -u"]
    for index, (command, _) in enumerate(commands(path)):
        script.append(f'{command}\necho "@@status {index} $?" >&2')
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [BASH, "-c", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    statuses = {
        int(i): int(s) for i, s in re.findall(r"^@@status (\d+) (\d+)$", result.stderr, re.M)
    }
    for index, (command, expected) in enumerate(commands(path)):
        assert statuses.get(index) == expected, (
            f"{path.relative_to(ROOT)}: `{command}` exited {statuses.get(index)}, "
            f"the docs say {expected}\n{result.stderr}"
        )


PYTHON_DOCS = [p for p in DOCS if _PYTHON.findall(p.read_text("utf-8"))]


@pytest.mark.parametrize("path", PYTHON_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_python_runs(path: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "demos", tmp_path / "demos")
    code = "\n".join(_PYTHON.findall(path.read_text("utf-8")))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{path.relative_to(ROOT)}:\n{result.stderr}"


_FILE_BLOCK = re.compile(r"^<!-- file: (\S+) -->\n```[a-z]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_files_shown_in_the_docs_match_the_repository() -> None:
    """A block marked ``<!-- file: PATH -->`` shows that file of the repository, exactly."""
    shown = [
        (page, name, text)
        for page in DOCS
        for name, text in _FILE_BLOCK.findall(page.read_text("utf-8"))
    ]
    assert len(shown) >= 4, "the tutorial shows its files"
    for page, name, text in shown:
        assert (ROOT / name).read_text("utf-8") == text, (
            f"{page.relative_to(ROOT)} shows {name} differently from the repository"
        )


def test_the_threat_model_names_tests_that_exist() -> None:
    """Every test file and test function the threat model cites is in the test suite."""
    text = (ROOT / "docs" / "explain" / "threat-model.md").read_text("utf-8")
    paths = set(re.findall(r"`(tests/[\w/.]+?)(?:::\w+)?`", text))
    names = set(re.findall(r"\b(test_\w+)\b", text)) - {Path(p).stem for p in paths}
    assert paths
    assert names
    for path in paths:
        assert (ROOT / path).exists(), path
    sources = "\n".join(p.read_text("utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    missing = sorted(name for name in names if f"def {name}(" not in sources)
    assert not missing, f"the threat model cites tests that do not exist: {missing}"
