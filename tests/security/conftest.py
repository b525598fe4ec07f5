"""The security suite: every attack of THREATS.md items 1-19 run from inside real containers.

Each test module starts one supervisor per test with the features it needs, runs the attacks in
the containers through services defined in the module (shipped into the container by value), and
asserts both how each attack fails and that nothing is left behind on the host.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._host import needs_full_isolation


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the suite, with the reason, on a machine without full isolation as root."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(needs_full_isolation)


@pytest.fixture(autouse=True)
def _collect_garbage_inside_the_test() -> Iterator[None]:
    """Finalise a test's supervisor objects during its own teardown, not a later test's."""
    yield
    gc.collect()
