"""Reading one feature bundle's ``capsule.toml`` into a FeatureManifest, and ``load_feature``.

Checks the bundle on its own: it must not look at other features or at the app's
policy, and it never imports bundle code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final, final

import msgspec

from capsule._manifest._access import Request, read_access
from capsule._manifest._entry import check_entry, check_entry_syntax
from capsule._manifest._locator import KeyPath
from capsule._manifest._model import (
    DEFAULT_LIMITS,
    DEFAULT_RESTART,
    FeatureManifest,
    Limits,
    RestartPolicy,
)
from capsule._manifest._problems import Doc, Problem, problems_error, sorted_problems
from capsule._manifest._reader import Table, read_toml
from capsule._manifest._updates import UPDATE_IN_BUNDLE
from capsule._tokens._caps import covering, parse_capability
from capsule._units import format_size, parse_backoff, parse_duration, parse_size
from capsule.errors import ConfigError

__all__ = [
    "FEATURE_TABLES",
    "ParsedFeature",
    "check_feature_name",
    "load_feature",
    "read_feature",
]

FEATURE_TABLES: Final = ("feature", "provides", "requires", "access", "limits", "restart")
_NAME: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_SERVICE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TOPIC: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}(?:\.[a-z0-9][a-z0-9_-]{0,62})*")
_NUMBER: Final = r"(?:0|[1-9][0-9]*)"
_VERSION: Final = re.compile(
    rf"{_NUMBER}(?:\.{_NUMBER}){{0,2}}(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_MIN_MEMORY: Final = 16 << 20
_MAX_PIDS: Final = 1 << 22
_MAX_RESTARTS: Final = 1000
_RESTART_POLICIES: Final = ("always", "on-failure", "never")


@final
class ParsedFeature(msgspec.Struct, frozen=True, kw_only=True):
    """A bundle as read for checking: the manifest plus where each entry was written.

    ``clean`` is False when capsule.toml or its entry module had an error; the
    manifest then holds defaults in place of the bad values and serves only to
    check the rest of the app.
    """

    manifest: FeatureManifest
    doc: Doc
    shown: str
    requests: tuple[Request, ...]
    requires: tuple[tuple[KeyPath, str], ...]
    clean: bool


def check_feature_name(value: str) -> str | None:
    """An error message for a feature name that is not ``[a-z][a-z0-9-]*`` (max 63), else None."""
    if _NAME.fullmatch(value):
        return None
    return (
        f'name "{value}" is not valid: use 1 to 63 lower-case letters, digits and "-", '
        'starting with a letter, e.g. "spellcheck"'
    )


def _check_version(value: str) -> str | None:
    if _VERSION.fullmatch(value):
        return None
    return (
        f'version "{value}" is not valid: use N[.N[.N]] with an optional -prerelease, '
        'e.g. "1.2.0" or "2.0.0-rc.1"'
    )


def _check_service(value: str) -> str | None:
    if _SERVICE.fullmatch(value):
        return None
    return (
        f'service name "{value}" is not valid: use lower-case letters, digits, "-" and "_", '
        'starting with a letter or digit, e.g. "lookup"'
    )


def _check_topic(value: str) -> str | None:
    if _TOPIC.fullmatch(value):
        return None
    return (
        f'topic "{value}" is not valid: a published topic is a concrete name of dot-separated '
        'lower-case segments (no "*"), e.g. "spell.checked"'
    )


def _size_at_least(minimum: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        size = parse_size(value)
        if size < minimum:
            raise ConfigError(f"must be at least {format_size(minimum)}, found {format_size(size)}")
        return size

    return convert


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ConfigError(f'must be more than 0, found "{value}"')
    return seconds


def _read_limits(table: Table | None) -> Limits:
    if table is None:
        return DEFAULT_LIMITS
    table.allow("memory", "pids", "cpu", "open_files", "tmp")
    memory = table.converted("memory", _size_at_least(_MIN_MEMORY))
    pids = table.integer("pids", minimum=1, maximum=_MAX_PIDS)
    cpu = table.number("cpu", above=0, maximum=1024)
    open_files = table.integer("open_files", minimum=16, maximum=1 << 20)
    tmp = table.converted("tmp", parse_size)
    default = DEFAULT_LIMITS
    return Limits(
        memory=default.memory if memory is None else memory,
        pids=default.pids if pids is None else pids,
        cpu=default.cpu if cpu is None else cpu,
        open_files=default.open_files if open_files is None else open_files,
        tmp=default.tmp if tmp is None else tmp,
    )


def _read_restart(table: Table | None) -> RestartPolicy:
    if table is None:
        return DEFAULT_RESTART
    table.allow("policy", "max_restarts", "window", "backoff")
    policy = table.choice("policy", _RESTART_POLICIES)
    max_restarts = table.integer("max_restarts", minimum=0, maximum=_MAX_RESTARTS)
    window = table.converted("window", _positive_duration)
    backoff = table.converted("backoff", parse_backoff)
    default = DEFAULT_RESTART
    initial, maximum = backoff or (default.backoff_initial, default.backoff_max)
    return RestartPolicy(
        policy="always" if policy == "always" else "never" if policy == "never" else "on-failure",
        max_restarts=default.max_restarts if max_restarts is None else max_restarts,
        window=default.window if window is None else window,
        backoff_initial=initial,
        backoff_max=maximum,
    )


def read_feature(bundle: Path, shown: str, sink: list[Problem]) -> ParsedFeature | None:
    """Read ``bundle/capsule.toml`` and check its entry module; None when unreadable or unnamed."""
    mark = len(sink)
    loaded = read_toml(bundle / "capsule.toml", f"{shown}/capsule.toml", sink)
    if loaded is None:
        return None
    top, doc = loaded
    top.allow(*FEATURE_TABLES, refused=("update",))
    if "update" in top:
        doc.error(("update",), UPDATE_IN_BUNDLE)
    head = top.table("feature", required=True)
    name = version = entry = description = forward_only = None
    if head is not None:
        head.allow("name", "version", "entry", "description", "forward_only", refused=("update",))
        if "update" in head:
            doc.error(("feature", "update"), UPDATE_IN_BUNDLE)
        name = head.string("name", required='name = "spellcheck"', check=check_feature_name)
        version = head.string("version", required='version = "1.0.0"', check=_check_version)
        entry = head.string(
            "entry", required='entry = "spellcheck:feature"', check=check_entry_syntax
        )
        description = head.string("description")
        forward_only = head.boolean("forward_only")
    provides = top.table("provides")
    services: list[tuple[KeyPath, str]] = []
    topics: list[tuple[KeyPath, str]] = []
    if provides is not None:
        provides.allow("services", "topics")
        services = provides.strings("services", _check_service)
        topics = provides.strings("topics", _check_topic)
    requires_table = top.table("requires")
    requires: list[tuple[KeyPath, str]] = []
    if requires_table is not None:
        requires_table.allow("features")
        requires = requires_table.strings("features", check_feature_name)
    access, requests = read_access(top.table("access"))
    limits = _read_limits(top.table("limits"))
    restart = _read_restart(top.table("restart"))
    published = [parse_capability(f"icc:publish:{t}") for t in access.publish]
    for key, topic in topics:
        if covering(parse_capability(f"icc:publish:{topic}"), published) is None:
            doc.error(
                key,
                f'declares it publishes "{topic}" but [access] publish does not ask for it: '
                f'add "{topic}" (or a pattern such as "{topic.split(".")[0]}.*") to access.publish',
            )
    if entry is not None:
        check_entry(bundle, shown, entry, doc, ("feature", "entry"))
    if name is None:
        return None
    manifest = FeatureManifest(
        name=name,
        version=version or "0",
        entry=entry or f"{name}:feature",
        root=Path(os.path.abspath(bundle)),
        description=description or "",
        services=tuple(s for _, s in services),
        topics=tuple(t for _, t in topics),
        requires=tuple(r for _, r in requires),
        access=access,
        limits=limits,
        restart=restart,
        forward_only=bool(forward_only),
    )
    return ParsedFeature(
        manifest=manifest,
        doc=doc,
        shown=shown,
        requests=requests,
        requires=tuple(requires),
        clean=not doc.errors_since(mark) and not _module_errors(sink, mark, shown),
    )


def _module_errors(sink: list[Problem], mark: int, shown: str) -> bool:
    """Whether a syntax error was reported in one of the bundle's Python files."""
    return any(p.path.startswith(f"{shown}/") and p.path.endswith(".py") for p in sink[mark:])


def load_feature(path: str | os.PathLike[str]) -> FeatureManifest:
    """Read and check one feature bundle (its directory, or its capsule.toml).

    Raises ConfigError with the path, key and line of the first error; its
    ``problems`` holds every problem found. Warnings do not raise.
    """
    given = Path(path)
    bundle = given.parent if given.name == "capsule.toml" else given
    if not (bundle / "capsule.toml").is_file():
        raise ConfigError(
            f"no capsule.toml in {bundle}: a feature bundle is a directory with capsule.toml",
            path=str(bundle),
        )
    sink: list[Problem] = []
    parsed = read_feature(bundle, str(bundle), sink)
    problems = sorted_problems(sink)
    error = problems_error(problems)
    if error is not None:
        raise error
    if parsed is None:  # pragma: no cover - a nameless manifest always reports an error
        raise ConfigError("capsule.toml names no feature", path=str(bundle / "capsule.toml"))
    return parsed.manifest
