"""Checking a whole app: ``check_app`` reports every problem at once, ``load_app`` raises.

Ties the readers and the cross-feature checks together, and itself checks only how
bundles are found and named, policy names and ``requires``; it must not print, and it
never raises for manifest content.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from capsule._manifest._app import ParsedApp, read_app
from capsule._manifest._feature import ParsedFeature, read_feature
from capsule._manifest._grants import grant_feature
from capsule._manifest._locator import KeyPath, format_key
from capsule._manifest._ondemand import check_on_demand
from capsule._manifest._order import find_cycles, start_order
from capsule._manifest._problems import Doc, Problem, problems_error, sorted_problems
from capsule._manifest._reader import suggest
from capsule._manifest._report import App, CheckReport
from capsule._manifest._routes import build_routes, check_routes
from capsule.errors import InternalError

__all__ = ["bundle_problem", "check_app", "check_requires", "load_app"]


def _shown(path: str | os.PathLike[str]) -> str:
    return PurePosixPath(Path(path).as_posix()).as_posix()


def _bundle_shown(shown: str, written: str) -> str:
    """How a bundle directory is named in problems: under the app's shown path if relative."""
    relative = PurePosixPath(written)
    return relative.as_posix() if relative.is_absolute() else f"{shown}/{relative.as_posix()}"


def bundle_problem(directory: Path, written: str, looked: str) -> str | None:
    """Why ``directory`` (written ``written``, shown as ``looked``) is no bundle, or None."""
    if not directory.is_dir():
        state = "does not exist" if not directory.exists() else "is not a directory"
        return f'bundle directory "{written}" {state} (looked for {looked})'
    if not (directory / "capsule.toml").is_file():
        return (
            f'no capsule.toml in bundle "{written}": a feature bundle is a directory '
            "with capsule.toml and its Python code"
        )
    return None


def _read_bundles(
    app: ParsedApp, root: Path, shown: str, sink: list[Problem]
) -> tuple[dict[str, ParsedFeature], set[str]]:
    """Read every listed bundle; return the named features and the names of unreadable ones."""
    features: dict[str, ParsedFeature] = {}
    declared_at: dict[str, tuple[KeyPath, str]] = {}
    seen: dict[str, KeyPath] = {}
    unreadable: set[str] = set()
    doc = app.doc
    for key, written in app.bundles:
        relative = PurePosixPath(written).as_posix()
        directory = root / relative
        real = os.path.realpath(directory)
        if real in seen:
            doc.error(key, f'bundle "{written}" is listed twice (also at {format_key(seen[real])})')
            continue
        seen[real] = key
        guess = PurePosixPath(relative).name
        problem = bundle_problem(directory, written, _bundle_shown(shown, written))
        if problem is not None:
            doc.error(key, problem)
            unreadable.add(guess)
            continue
        parsed = read_feature(directory, _bundle_shown(shown, written), sink)
        if parsed is None:
            unreadable.add(guess)
            continue
        name = parsed.manifest.name
        if name in features:
            first_key, first = declared_at[name]
            doc.error(
                key,
                f'bundle "{written}" declares feature "{name}", which bundle "{first}" '
                f"({format_key(first_key)}) already declares: feature names must be unique",
            )
            continue
        features[name] = parsed
        declared_at[name] = (key, written)
    return features, unreadable


def _check_policies(
    app: ParsedApp, features: Mapping[str, ParsedFeature], unknown_ok: Callable[[str], bool]
) -> None:
    for name, policy in app.policies.items():
        if name in features or unknown_ok(name):
            continue
        listing = ", ".join(features) or "none"
        app.doc.error(
            policy.key,
            f'approves access for "{name}", but the app has no feature of that name'
            f"{suggest(name, features)}; its features: {listing}",
        )


def check_requires(
    checked: Mapping[str, ParsedFeature],
    requires: Mapping[str, Sequence[str]],
    unknown_ok: Callable[[str], bool],
) -> None:
    """Report what the ``checked`` features require that is not a feature of ``requires``
    (every feature's requires: the app's, with the checked ones among them), and each
    cycle through a checked feature."""
    listing = ", ".join(requires)
    for parsed in checked.values():
        for key, dep in parsed.requires:
            if dep not in requires and not unknown_ok(dep):
                parsed.doc.error(
                    key,
                    f'requires "{dep}", but the app has no feature of that name'
                    f"{suggest(dep, requires)}; its features: {listing}",
                )
    for cycle in find_cycles(requires, list(requires)):
        at = next((i for i, name in enumerate(cycle[:-1]) if name in checked), None)
        if at is None:
            continue
        turned = [*cycle[at:-1], *cycle[:at], cycle[at]]
        first = checked[turned[0]]
        key = next(key for key, dep in first.requires if dep == turned[1])
        first.doc.error(
            key,
            f"requires cycle: {' -> '.join(turned)}; features in a cycle can never start: "
            "remove one of these requires",
        )


def check_app(path: str | os.PathLike[str]) -> CheckReport:
    """Check an app directory (app.toml and every bundle it lists); report every problem.

    Never raises for manifest content: syntax errors, bad values, missing files and
    conflicts all become problems in the report.
    """
    shown = _shown(path)
    root = Path(os.path.abspath(path))
    sink: list[Problem] = []
    if not (root / "app.toml").is_file():
        Doc(f"{shown}/app.toml", None, sink).error(
            (), f"no app.toml in {shown}: an app is a directory with app.toml"
        )
        return CheckReport(root=root, problems=tuple(sink))
    app = read_app(root, shown, sink)
    if app is None:
        return CheckReport(root=root, problems=sorted_problems(sink))
    features, unreadable = _read_bundles(app, root, shown, sink)
    _check_policies(app, features, unreadable.__contains__)
    graph = {name: [dep for _, dep in parsed.requires] for name, parsed in features.items()}
    check_requires(features, graph, unreadable.__contains__)
    check_on_demand(features, app)
    check_routes(features, unreadable.__contains__, plugins=app.plugins is not None)
    grants = {
        name: grant_feature(parsed, app.policies.get(name), app.volumes, app.doc)
        for name, parsed in features.items()
    }
    clean = {name: parsed.manifest for name, parsed in features.items() if parsed.clean}
    clean_grants = {name: grants[name] for name in clean}
    order = start_order({name: manifest.requires for name, manifest in clean.items()}, list(clean))
    places = [app.doc.path, *(_bundle_shown(shown, written) for _, written in app.bundles)]
    return CheckReport(
        root=root,
        problems=sorted_problems(sink, places),
        app=app.manifest,
        features=MappingProxyType(clean),
        start_order=order,
        grants=MappingProxyType(clean_grants),
        volumes=MappingProxyType(dict(app.volumes)),
        routes=build_routes(clean, clean_grants),
    )


def load_app(path: str | os.PathLike[str]) -> App:
    """Check an app and return it; raise ConfigError if there is any error.

    The error carries the path, key and line of the first error, and ``problems``
    holds every problem found. Warnings do not raise.
    """
    report = check_app(path)
    error = problems_error(report.problems)
    if error is not None:
        raise error
    if report.app is None:  # pragma: no cover - no errors means app.toml was read
        raise InternalError("an app without errors has no manifest")
    return App(
        root=report.root,
        manifest=report.app,
        features=report.features,
        start_order=report.start_order,
        grants=report.grants,
        volumes=report.volumes,
        routes=report.routes,
    )
