"""The entry module check: files are found and parsed, and bundle code never runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsule._manifest import load_feature
from capsule.errors import ConfigError
from tests.capsule.manifest_helpers import build


def toml(entry: str) -> str:
    return f'[feature]\nname = "demo"\nversion = "1.0.0"\nentry = "{entry}"\n'


def load(tmp_path: Path, entry: str, files: dict[str, str]) -> ConfigError | None:
    root = build(tmp_path / "demo", {"capsule.toml": toml(entry), **files})
    try:
        load_feature(root)
    except ConfigError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("entry", "files"),
    [
        ("demo:feature", {"demo.py": "feature = object()\n"}),
        ("demo:feature", {"demo.py": "feature: object = object()\n"}),
        ("demo:feature", {"demo.py": "feature, other = 1, 2\n"}),
        ("demo:feature", {"demo.py": "def feature():\n    pass\n"}),
        ("demo:feature", {"demo.py": "class feature:\n    pass\n"}),
        ("demo:feature", {"demo.py": "from elsewhere import feature\n"}),
        ("demo:feature", {"demo.py": "from elsewhere import thing as feature\n"}),
        ("demo:feature", {"demo.py": "from elsewhere import *\n"}),
        (
            "demo:feature",
            {"demo.py": "try:\n    feature = 1\nexcept Exception:\n    feature = 2\n"},
        ),
        ("demo:feature", {"demo.py": "if True:\n    feature = 1\nelse:\n    pass\n"}),
        ("pkg:feature", {"pkg/__init__.py": "feature = 1\n"}),
        ("pkg.sub:app", {"pkg/sub.py": "app = 1\n"}),
    ],
)
def test_entry_attribute_found_at_module_level(
    tmp_path: Path, entry: str, files: dict[str, str]
) -> None:
    assert load(tmp_path, entry, files) is None


@pytest.mark.parametrize(
    "source",
    [
        "def make():\n    feature = 1\n",
        "class Holder:\n    feature = 1\n",
        "feature_two = 1\n",
        "feature: object\n",
        "import feature.sub as other\n",
    ],
)
def test_entry_attribute_not_assigned_at_module_level(tmp_path: Path, source: str) -> None:
    error = load(tmp_path, "demo:feature", {"demo.py": source})
    assert error is not None
    assert (error.key, error.line) == ("feature.entry", 4)
    assert 'entry attribute "feature" is not assigned at the top level of' in error.message
    assert error.message.endswith("demo/demo.py: define it there, e.g. feature = Feature()")


def test_entry_module_missing(tmp_path: Path) -> None:
    error = load(tmp_path, "spell:feature", {"spellcheck.py": "feature = 1\n"})
    assert error is not None
    assert (error.key, error.line) == ("feature.entry", 4)
    assert 'entry module "spell" is not in the bundle: expected spell.py or spell/__init__.py' in (
        error.message
    )


def test_package_entry_lists_both_forms(tmp_path: Path) -> None:
    error = load(tmp_path, "pkg.sub:feature", {})
    assert error is not None
    assert "expected pkg/sub.py or pkg/sub/__init__.py" in error.message


def test_syntax_error_in_the_module_is_reported_at_the_module_line(tmp_path: Path) -> None:
    error = load(tmp_path, "demo:feature", {"demo.py": "x = 1\nfeature = (\n\ndef\n"})
    assert error is not None
    assert error.path is not None
    assert error.path.endswith("demo/demo.py")
    assert error.line is not None
    assert error.line >= 2
    assert error.message.startswith("Python syntax error: ")


def test_module_linking_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    outside = build(tmp_path / "elsewhere", {"evil.py": "feature = 1\n"})
    root = build(tmp_path / "demo", {"capsule.toml": toml("demo:feature")})
    os.symlink(outside / "evil.py", root / "demo.py")
    with pytest.raises(ConfigError, match="outside the bundle"):
        load_feature(root)


def test_bundle_code_is_parsed_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nfeature = 1\n"
    assert load(tmp_path, "demo:feature", {"demo.py": source}) is None
    assert not marker.exists()
