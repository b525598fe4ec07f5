"""The pytest plugin of capsule.testing: a ``capsule_app`` fixture per test.

Registered through the ``pytest11`` entry point; it only builds TestApp objects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule.testing._app import TestApp


@pytest.fixture
def capsule_app(tmp_path: Path) -> TestApp:
    """A fresh, empty TestApp under this test's temporary directory."""
    return TestApp(tmp_path / "app")
