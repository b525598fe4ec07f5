"""What a new version or a plugin would be granted, read against a running app, and how
that differs from what runs now.

Reads one bundle with the checks ``capsule check`` runs (its capsule.toml and entry
module, its requires, its calls and subscriptions, and its grant from the app's policy);
it must not start, stop or change anything, and it never imports bundle code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import final

import msgspec

from capsule._manifest._access import approvals_of
from capsule._manifest._app import ParsedPolicy
from capsule._manifest._check import bundle_problem, check_requires
from capsule._manifest._feature import ParsedFeature, read_feature
from capsule._manifest._grants import grant_feature
from capsule._manifest._locator import KeyPath, format_key
from capsule._manifest._model import FeatureGrant, FeatureManifest, Limits, Policy
from capsule._manifest._problems import Doc, Problem, Severity, problems_error, sorted_problems
from capsule._manifest._report import App
from capsule._manifest._routes import check_routes
from capsule._tokens._caps import Capability, covering
from capsule._units import format_size
from capsule.errors import ConfigError, InternalError, UpdateRefusedError

__all__ = [
    "Candidate",
    "CapabilityDiff",
    "LimitChange",
    "approval_needed",
    "diff_grants",
    "read_candidate",
]

_LIMIT_NAMES = ("memory", "pids", "cpu", "open_files", "tmp")
_SIZES = ("memory", "tmp")


@final
class LimitChange(msgspec.Struct, frozen=True, kw_only=True):
    """One resource limit of the container (``Limits``) that differs: ``before`` is None
    for a feature that does not run yet."""

    name: str
    before: float | None
    after: float

    @property
    def raised(self) -> bool:
        return self.before is not None and self.after > self.before

    def __str__(self) -> str:
        def shown(value: float) -> str:
            return format_size(int(value)) if self.name in _SIZES else f"{value:g}"

        if self.before is None:
            return f"limits.{self.name} {shown(self.after)}"
        return f"limits.{self.name} {shown(self.before)} -> {shown(self.after)}"


@final
class CapabilityDiff(msgspec.Struct, frozen=True, kw_only=True):
    """How a candidate's grant differs from what the feature is granted now.

    ``added``, ``removed`` and ``kept`` are capabilities as ``str(Capability)``;
    ``limits`` the container limits that change (all of them for a new feature).
    ``widens`` is True when the candidate gets something the running version does not
    hold: an added capability no running one covers, or a raised limit. Narrowing (only
    removals, or added capabilities that running ones cover, or lower limits) does not.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    limits: tuple[LimitChange, ...] = ()
    widens: bool = False

    def render(self) -> str:
        """Human lines: ``+ cap`` added, ``- cap`` removed, ``  cap`` kept, ``~ limits...``
        changed (``+ limits...`` for a new feature)."""
        lines = [f"+ {cap}" for cap in self.added]
        lines += [f"- {cap}" for cap in self.removed]
        lines += [f"  {cap}" for cap in self.kept]
        lines += [f"{'+' if c.before is None else '~'} {c}" for c in self.limits]
        return "\n".join(lines) if lines else "  (no change: asks for nothing new)"


@final
class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """A bundle read against a running app: its manifest, exactly what the app would
    grant it, how that differs from the running grant, and the warnings ``capsule check``
    would show for it."""

    manifest: FeatureManifest
    grant: FeatureGrant
    diff: CapabilityDiff
    warnings: tuple[Problem, ...] = ()


def approval_needed(diff: CapabilityDiff) -> bool:
    """Whether taking the candidate needs the operator's approval: when it widens."""
    return diff.widens


def _limit_changes(before: Limits | None, after: Limits) -> tuple[LimitChange, ...]:
    changes = []
    for name in _LIMIT_NAMES:
        new = float(getattr(after, name))
        old = None if before is None else float(getattr(before, name))
        if old != new:
            changes.append(LimitChange(name=name, before=old, after=new))
    return tuple(changes)


def diff_grants(
    before: FeatureGrant | None,
    after: FeatureGrant,
    *,
    before_limits: Limits | None = None,
    after_limits: Limits | None = None,
) -> CapabilityDiff:
    """The difference between a running grant (None: nothing runs) and a candidate's."""
    old: tuple[Capability, ...] = () if before is None else before.capabilities
    old_text = [str(cap) for cap in old]
    new_text = [str(cap) for cap in after.capabilities]
    added = tuple(text for text in new_text if text not in old_text)
    removed = tuple(text for text in old_text if text not in new_text)
    kept = tuple(text for text in new_text if text in old_text)
    limits = () if after_limits is None else _limit_changes(before_limits, after_limits)
    wider = any(
        covering(cap, old) is None for cap in after.capabilities if str(cap) in added
    ) or any(change.raised for change in limits)
    return CapabilityDiff(added=added, removed=removed, kept=kept, limits=limits, widens=wider)


def _refuse_call(message: str, bundle: Path) -> ConfigError:
    return ConfigError(message, path=os.fspath(bundle))


def _policy(app: App, name: str, *, plugin: bool) -> tuple[ParsedPolicy | None, str]:
    """The policy the candidate is granted from, and how messages name its table."""
    if plugin:
        policy: Policy | None = app.manifest.plugins
        key: KeyPath = ("plugins",)
        table = "[plugins]"
    else:
        policy = app.manifest.policies.get(name)
        key = ("policy", name)
        table = f"[policy.{name}]"
    if policy is None:
        return None, table
    return ParsedPolicy(key=key, policy=policy, approvals=approvals_of(policy, key)), table


def _check_name(parsed: ParsedFeature, app: App, feature: str | None, *, plugin: bool) -> None:
    name = parsed.manifest.name
    key: KeyPath = ("feature", "name")
    if feature is not None and name != feature:
        parsed.doc.error(
            key,
            f'this bundle is feature "{name}", not "{feature}": an update replaces a feature '
            "with a bundle of the same name",
        )
    elif plugin and feature is None and name in app.features:
        parsed.doc.error(
            key,
            f'a plugin cannot be named "{name}": the app already has a feature of that name '
            f"({app.features[name].root}); rename the plugin",
        )


def read_candidate(
    app: App, bundle: Path, *, feature: str | None = None, plugin: bool = False
) -> Candidate:
    """Read ``bundle`` as a new version of ``feature`` or as a plugin (``plugin=True``),
    against ``app`` as the supervisor runs it.

    ``app.features[feature]`` and ``app.grants[feature]`` are the running version, which
    the diff compares with. An update's grant comes from ``[policy.FEATURE]``, a plugin's
    from ``[plugins]`` (with both, an update of an installed plugin). The bundle gets the
    checks ``capsule check`` runs: ConfigError (file, line and key; ``problems`` holds
    them all) for a bad bundle, a wrong name, a plugin named like an app feature, a
    ``requires`` the app cannot meet or a call to a service no feature provides (a plugin
    may call features the app does not know: other plugins). A request the policy does not
    approve raises UpdateRefusedError naming each one's capsule.toml file, line and key.
    """
    if feature is None and not plugin:
        raise TypeError("read_candidate needs feature=NAME (an update) or plugin=True")
    if feature is not None and not plugin and feature not in app.features:
        known = ", ".join(app.features) or "none"
        raise ConfigError(f"the app has no feature {feature!r} to update; its features: {known}")
    path = Path(os.path.abspath(bundle))
    problem = bundle_problem(path, os.fspath(bundle), os.fspath(path))
    if problem is not None:
        raise _refuse_call(problem, path)
    sink: list[Problem] = []
    shown = os.fspath(path)
    parsed = read_feature(path, shown, sink)
    if parsed is None:
        error = problems_error(sorted_problems(sink))
        raise error or InternalError("a bundle that names no feature reported no error")
    name = parsed.manifest.name
    _check_name(parsed, app, feature, plugin=plugin)
    manifests: dict[str, FeatureManifest] = {**app.features, name: parsed.manifest}
    check_requires({name: parsed}, {n: m.requires for n, m in manifests.items()}, _no)
    check_routes(
        {name: parsed},
        (lambda n: n not in manifests) if plugin else _no,
        manifests,
        plugins=app.manifest.plugins is not None,
    )
    policy, table = _policy(app, name, plugin=plugin)
    unapproved: list[KeyPath] = []
    app_doc = Doc(os.fspath(app.root / "app.toml"), None, sink)
    mark = len(sink)
    grant = grant_feature(parsed, policy, app.volumes, app_doc, table=table, unapproved=unapproved)
    keys = {format_key(key) for key in unapproved}
    refused = sorted_problems(p for p in sink[mark:] if p.path == parsed.doc.path and p.key in keys)
    problems = sorted_problems(sink, [shown])
    broken = tuple(p for p in problems if p not in refused)
    if any(p.severity is Severity.ERROR for p in broken):
        error = problems_error((*broken, *refused))  # the bundle's own errors first, all kept
        raise error or InternalError("a bundle with errors raised none")
    if refused:
        raise UpdateRefusedError(
            name, tuple(f"{p.location} [{p.key}] {p.message}" for p in refused)
        )
    running = app.features.get(name) if feature is not None else None
    diff = diff_grants(
        None if running is None else app.grants.get(name),
        grant,
        before_limits=None if running is None else running.limits,
        after_limits=parsed.manifest.limits,
    )
    warnings = tuple(p for p in problems if p.severity is Severity.WARNING)
    return Candidate(manifest=parsed.manifest, grant=grant, diff=diff, warnings=warnings)


def _no(_: str) -> bool:
    return False
