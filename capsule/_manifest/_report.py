"""What checking an app produces: the CheckReport, and the App that loads without errors.

Plain frozen data: it must not read files or run checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import final

import msgspec

from capsule._manifest._model import AppManifest, FeatureGrant, FeatureManifest, Route
from capsule._manifest._problems import Problem, Severity

__all__ = ["App", "CheckReport"]


@final
class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """Every problem of an app, and whatever of the app could be built despite them.

    ``features`` holds the bundles whose own capsule.toml (and entry module) had no
    error, in app.toml order; ``start_order`` those of them whose ``requires`` can be
    met; ``grants`` what each of them would receive; ``app`` is None when app.toml
    could not be read at all.
    """

    root: Path
    problems: tuple[Problem, ...] = ()
    app: AppManifest | None = None
    features: Mapping[str, FeatureManifest] = msgspec.field(default_factory=dict)
    start_order: tuple[str, ...] = ()
    grants: Mapping[str, FeatureGrant] = msgspec.field(default_factory=dict)
    volumes: Mapping[str, Path] = msgspec.field(default_factory=dict)
    routes: tuple[Route, ...] = ()

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors


@final
class App(msgspec.Struct, frozen=True, kw_only=True):
    """An app whose manifests have no errors: what the supervisor starts.

    ``root`` is the absolute app directory, ``features`` maps each name to its
    manifest (app.toml order), ``start_order`` lists dependencies first (ties in
    app.toml order), ``grants`` is the authority each feature receives and
    ``volumes`` maps each volume name to its real host directory.
    """

    root: Path
    manifest: AppManifest
    features: Mapping[str, FeatureManifest]
    start_order: tuple[str, ...]
    grants: Mapping[str, FeatureGrant]
    volumes: Mapping[str, Path]
    routes: tuple[Route, ...] = ()
