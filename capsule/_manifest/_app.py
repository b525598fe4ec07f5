"""Reading an app's ``app.toml``: its name, bundle list, strategy, volumes and policies
(``[policy.NAME]`` for its features, ``[plugins]`` for bundles installed while it runs).

Checks app.toml on its own (volume directories included): it must not read the
feature bundles or compare policies with what features request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Final, final

import msgspec

from capsule._manifest._access import VOLUME_NAME, Approval, read_policy
from capsule._manifest._feature import check_feature_name
from capsule._manifest._locator import KeyPath
from capsule._manifest._model import AppManifest, Policy, Strategy
from capsule._manifest._problems import Doc, Problem
from capsule._manifest._reader import Table, read_toml, suggest
from capsule._units import format_duration, format_size, parse_duration, parse_size
from capsule.errors import ConfigError

__all__ = ["APP_TABLES", "STRATEGIES", "ParsedApp", "ParsedPolicy", "read_app", "volume_dir"]

APP_TABLES: Final = ("app", "volumes", "policy", "plugins")
STRATEGIES: Final[tuple[Strategy, ...]] = ("one_for_one", "one_for_all", "rest_for_one")
WAIVABLE: Final[tuple[str, ...]] = ("cgroups", "landlock", "seccomp")
#: the shortest and longest lifetime of a container's tokens, in seconds
TOKEN_TTL_RANGE: Final = (1.0, 24 * 3600.0)
#: the smallest audit_max: five files of 64 KiB
AUDIT_MAX_MIN: Final = 320 << 10


@final
class ParsedPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[policy.NAME]`` table with the key each approval was written at."""

    key: KeyPath
    policy: Policy
    approvals: tuple[Approval, ...]


@final
class ParsedApp(msgspec.Struct, frozen=True, kw_only=True):
    """app.toml as read for checking.

    ``volumes`` holds the resolved directory of each volume that exists; ``plugins``
    the ``[plugins]`` table, if any; ``clean`` is False when app.toml itself had an error.
    """

    manifest: AppManifest
    doc: Doc
    bundles: tuple[tuple[KeyPath, str], ...]
    policies: Mapping[str, ParsedPolicy]
    volumes: Mapping[str, Path]
    clean: bool
    plugins: ParsedPolicy | None = None


def _check_waivable(value: str) -> str | None:
    if value in WAIVABLE:
        return None
    valid = ", ".join(f'"{name}"' for name in WAIVABLE)
    return (
        f'"{value}" is not a mechanism an app may run without: choose from {valid}'
        f"{suggest(value, WAIVABLE)} (user namespaces are always required)"
    )


def _token_ttl(value: object) -> float:
    seconds = parse_duration(value)
    low, high = TOKEN_TTL_RANGE
    if not low <= seconds <= high:
        raise ConfigError(
            f'must be from {format_duration(low)} to {format_duration(high)}, found "{value}"'
        )
    return seconds


def _audit_max(value: object) -> int:
    size = parse_size(value)
    if size < AUDIT_MAX_MIN:
        raise ConfigError(
            f"must be at least {format_size(AUDIT_MAX_MIN)}, found {format_size(size)}"
        )
    return size


def _check_bundle_dir(value: str) -> str | None:
    if not value.strip():
        return 'bundle directory is empty: give a path relative to app.toml, e.g. "features/editor"'
    return None


def _read_volumes(
    table: Table | None, root: Path, shown: str
) -> tuple[dict[str, str], dict[str, Path]]:
    declared: dict[str, str] = {}
    found: dict[str, Path] = {}
    if table is None:
        return declared, found
    for name in table.data:
        key = (*table.key, name)

        def check(value: str, name: str = name) -> str | None:
            if VOLUME_NAME.fullmatch(name) is None:
                return (
                    f'volume name "{name}" is not valid: use lower-case letters, digits, "-" '
                    'and "_", starting with a letter, e.g. "words"'
                )
            if not value.strip():
                return 'volume directory is empty: give a host directory, e.g. "volumes/words"'
            return None

        value = table.check_string(key, table.data[name], check)
        if value is None:
            continue
        declared[name] = value
        host = root / value
        looked = PurePosixPath(shown, value).as_posix()
        if not host.exists():
            table.doc.error(key, f'volume directory "{value}" does not exist (looked for {looked})')
        elif not host.is_dir():
            table.doc.error(key, f'volume directory "{value}" is not a directory ({looked})')
        else:
            found[name] = Path(os.path.realpath(host))
    return declared, found


def volume_dir(volumes: Mapping[str, Path], reference: str) -> Path | None:
    """The real directory behind ``name`` or ``name/sub/dir``.

    None when the volume is unknown, or the path is not a directory inside the volume
    (after following links).
    """
    name, _, sub = reference.partition("/")
    base = volumes.get(name)
    if base is None:
        return None
    if not sub:
        return base
    real = Path(os.path.realpath(base.joinpath(*sub.split("/"))))
    return real if real.is_relative_to(base) and real.is_dir() else None


def _check_policy_volumes(
    parsed: ParsedPolicy, declared: Mapping[str, str], volumes: Mapping[str, Path], doc: Doc
) -> None:
    """Report fs approvals naming undeclared volumes or missing subdirectories."""
    for approval in parsed.approvals:
        if approval.fs is None or approval.fs.storage == "private":
            continue
        reference = approval.fs.volume
        name, _, sub = reference.partition("/")
        key = (*approval.key, "volume")
        if name not in declared:
            known = ", ".join(declared) or "none"
            doc.error(
                key,
                f'volume "{name}" is not defined in [volumes]{suggest(name, declared)}; '
                f"defined volumes: {known}",
            )
        elif name in volumes and sub and volume_dir(volumes, reference) is None:
            doc.error(
                key,
                f'"{sub}" is not a directory inside volume "{name}" ({declared[name]}): '
                "create it or fix the path",
            )


def read_app(root: Path, shown: str, sink: list[Problem]) -> ParsedApp | None:
    """Read ``root/app.toml``; None when it cannot be parsed at all."""
    mark = len(sink)
    loaded = read_toml(root / "app.toml", f"{shown}/app.toml", sink)
    if loaded is None:
        return None
    top, doc = loaded
    top.allow(*APP_TABLES)
    head = top.table("app", required=True)
    name = strategy = None
    token_ttl: float | None = None
    audit_max: int | None = None
    audit_share: float | None = None
    bundles: list[tuple[KeyPath, str]] = []
    waived: list[str] = []
    if head is not None:
        head.allow(
            "name", "features", "strategy", "allow_missing", "token_ttl", "audit_max", "audit_share"
        )
        name = head.string("name", required='name = "notes"', check=check_feature_name)
        if "features" not in head:
            head.missing("features", 'features = ["features/editor"]')
        elif head.data["features"] == []:
            doc.error(
                ("app", "features"),
                'an app needs at least one feature bundle, e.g. features = ["features/editor"]',
            )
        for key, item in head.array("features"):
            value = head.check_string(key, item, _check_bundle_dir)
            if value is not None:
                bundles.append((key, value))
        strategy = head.choice("strategy", STRATEGIES)
        waived = [value for _, value in head.strings("allow_missing", _check_waivable)]
        token_ttl = head.converted("token_ttl", _token_ttl)
        audit_max = head.converted("audit_max", _audit_max)
        audit_share = head.number("audit_share", above=0, maximum=1)
    declared, volumes = _read_volumes(top.table("volumes"), root, shown)
    policies: dict[str, ParsedPolicy] = {}
    policy_table = top.table("policy")
    for feature, table in [] if policy_table is None else policy_table.tables():
        if table is None:
            continue
        policy, approvals = read_policy(table)
        parsed = ParsedPolicy(key=table.key, policy=policy, approvals=approvals)
        _check_policy_volumes(parsed, declared, volumes, doc)
        policies[feature] = parsed
    plugins = None
    plugins_table = top.table("plugins")
    if plugins_table is not None:
        policy, approvals = read_policy(plugins_table)
        if policy.start.on_demand:
            doc.error(
                (*plugins_table.key, "start"),
                "plugins start eagerly, when installed: start applies to [policy.NAME] only",
            )
        plugins = ParsedPolicy(key=plugins_table.key, policy=policy, approvals=approvals)
        _check_policy_volumes(plugins, declared, volumes, doc)
    manifest = AppManifest(
        name=name or "app",
        features=tuple(value for _, value in bundles),
        strategy=next((s for s in STRATEGIES if s == strategy), "one_for_one"),
        allow_missing=tuple(waived),
        token_ttl=token_ttl,
        audit_max=audit_max,
        audit_share=audit_share,
        volumes=MappingProxyType(declared),
        policies=MappingProxyType({name: parsed.policy for name, parsed in policies.items()}),
        plugins=None if plugins is None else plugins.policy,
    )
    return ParsedApp(
        manifest=manifest,
        doc=doc,
        bundles=tuple(bundles),
        policies=policies,
        volumes=volumes,
        clean=not doc.errors_since(mark),
        plugins=plugins,
    )
