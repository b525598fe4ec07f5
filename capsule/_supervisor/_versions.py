"""Which bundle each feature of an app runs when it opens, and recording the versions it starts.

Chooses bundles from the version history and records starts; it must not start or stop
containers (the supervisor does), and it reads a bundle only through ``read_candidate``,
with the checks ``capsule check`` runs.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from types import MappingProxyType

import msgspec
import structlog

from capsule._manifest import App, FeatureGrant, FeatureManifest, read_candidate
from capsule._manifest._order import start_order
from capsule._manifest._routes import build_routes
from capsule._supervisor._history import History
from capsule.errors import ConfigError, UpdateRefusedError

__all__ = ["note_start", "open_history", "running_app"]

_log = structlog.get_logger("capsule.supervisor")


def open_history(state_dir: Path) -> History:
    """The app's history; a corrupt file is logged as the error it is (naming its line and
    where it was moved aside) and the history starts empty."""
    try:
        return History(state_dir)
    except ConfigError as exc:
        _log.error(
            "version history is corrupt",
            path=exc.path,
            line=exc.line,
            error=exc.message,
        )
        return History(state_dir)


def running_app(app: App, history: History, *, inline: Collection[str] = ()) -> App:
    """``app`` with each feature's bundle the one its history says an app restart runs
    (``History.resolve``), read and granted against the app's policy as an update is.

    A history bundle that is gone, broken, no longer approved by the policy or no longer
    at the version recorded is logged as a warning, and the app's own bundle runs.
    Features run ``inline`` (given as code by the host program) keep the app's bundle.
    """
    features: dict[str, FeatureManifest] = dict(app.features)
    grants: dict[str, FeatureGrant] = dict(app.grants)
    for name, manifest in app.features.items():
        chosen = None if name in inline else history.resolve(name, manifest.version, manifest.root)
        if chosen is None:
            continue
        fallback = {
            "feature": name,
            "app_bundle": str(manifest.root),
            "app_version": manifest.version,
        }
        try:
            candidate = read_candidate(app, Path(chosen.bundle), feature=name)
        except (ConfigError, UpdateRefusedError) as exc:
            _log.warning(
                "cannot run the version the history names; running the app's bundle",
                version=chosen.version,
                bundle=chosen.bundle,
                error=str(exc),
                **fallback,
            )
            continue
        if candidate.manifest.version != chosen.version:
            _log.warning(
                "the bundle the history names changed version; running the app's bundle",
                version=chosen.version,
                bundle=chosen.bundle,
                found=candidate.manifest.version,
                **fallback,
            )
            continue
        _log.info(
            "running the version the history names",
            feature=name,
            version=chosen.version,
            bundle=chosen.bundle,
            recorded=chosen.event,
        )
        features[name] = candidate.manifest
        grants[name] = candidate.grant
    if all(features[name] is manifest for name, manifest in app.features.items()):
        return app
    order = start_order({n: m.requires for n, m in features.items()}, list(features))
    return msgspec.structs.replace(
        app,
        features=MappingProxyType(features),
        grants=MappingProxyType(grants),
        start_order=order,
        routes=build_routes(features, grants),
    )


def note_start(history: History, manifest: FeatureManifest) -> None:
    """Record ``started`` when a feature starts at a version and bundle that is not its
    current one (a restart of the same version records nothing). Blocking file I/O: run it
    in a worker thread. A history that cannot be written is logged, not raised: the
    feature runs, and a later app restart may run an earlier version."""
    current = history.current(manifest.name)
    root = str(manifest.root)
    if current is not None and (current.version, current.bundle) == (manifest.version, root):
        return
    try:
        history.record(manifest.name, manifest.version, root, "started")
    except (OSError, ConfigError) as exc:
        _log.error(
            "cannot record the version a feature started at",
            feature=manifest.name,
            version=manifest.version,
            history=str(history.path),
            error=str(exc),
        )
