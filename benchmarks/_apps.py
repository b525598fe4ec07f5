"""Apps the benchmark scripts share: trivial inline features answering ``ping``.

Builds apps and checks their answers only: it times nothing (the scripts do).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

# first: importing _common takes benchmarks/ off sys.path (benchmarks/fusefs.py would
# stand in for the fusefs package capsule imports)
import _common  # noqa: F401 - imported for what importing it does

# isort: split
from capsule import Supervisor
from capsule.feature import Context
from capsule.testing import TestApp

SERVICE: Final = "ping"


def ping_app(root: Path, name: str, policies: Mapping[str, Mapping[str, Any]]) -> TestApp:
    """An app of trivial inline features, each answering ``ping`` with its request; the
    keys of ``policies`` name the features, the values are their app policies."""
    return add_ping_features(TestApp(root, name=name), policies)


def add_ping_features(app: TestApp, policies: Mapping[str, Mapping[str, Any]]) -> TestApp:
    """Add to ``app`` trivial inline features answering ``ping`` with their request, as
    :func:`ping_app` makes them; ``app`` is returned."""
    for feature_name, policy in policies.items():
        feature = app.feature(feature_name, faults=False, policy=dict(policy))

        @feature.service(SERVICE)
        async def _ping(ctx: Context, request: Any) -> Any:
            return request

    return app


async def ping(sup: Supervisor, feature: str, index: int) -> None:
    """Call ``feature``'s ``ping`` with ``index``; raise unless it answers ``index``."""
    reply = await sup.call(feature, SERVICE, index)
    if reply != index:
        raise RuntimeError(f"{feature} answered {reply!r}, expected {index!r}")
