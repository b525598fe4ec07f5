"""What ``capsule check`` and ``capsule graph`` print: an app's check report as text, JSON
or a DOT graph.

Must not hold logic of its own: it calls ``check_app`` and prints the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from capsule._cli._common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    app_dir_problem,
)
from capsule._cli._dot import render_dot
from capsule._manifest import (
    CheckReport,
    FeatureGrant,
    FeatureManifest,
    Policy,
    Problem,
    UpdatePolicy,
    check_app,
)
from capsule._manifest._model import DEFAULT_UPDATE_POLICY, DEFAULT_VARIANT_POLICY
from capsule._units import format_duration, format_size

__all__ = ["check", "graph"]


def check(args: argparse.Namespace) -> int:
    if app_dir_problem("check", args.app):
        return EXIT_USAGE
    report = check_app(args.app)
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    if args.format == "json":
        print(json.dumps(_as_json(report, args.app, failed=failed), indent=2))
    else:
        print(_as_text(report, args.app, strict=args.strict, failed=failed), end="")
    return EXIT_PROBLEMS if failed else EXIT_OK


def graph(args: argparse.Namespace) -> int:
    if app_dir_problem("graph", args.app):
        return EXIT_USAGE
    report = check_app(args.app)
    print(render_dot(report), end="")
    if report.errors:
        print(
            f"capsule graph: {args.app} has {_plural(len(report.errors), 'error')}; the graph "
            f"shows only what checks cleanly (see `capsule check {args.app}`)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return EXIT_OK


# -- text -----------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _feature_lines(report: CheckReport, manifest: FeatureManifest) -> list[str]:
    pad = " " * 7
    lines: list[str] = []
    if manifest.description:
        lines.append(f"{pad}{manifest.description}")
    provided = []
    if manifest.services:
        provided.append("services " + ", ".join(manifest.services))
    if manifest.topics:
        provided.append("topics " + ", ".join(manifest.topics))
    lines.append(f"{pad}{'provides':<9}{'; '.join(provided) or '-'}")
    if manifest.requires:
        lines.append(f"{pad}{'requires':<9}{', '.join(manifest.requires)}")
    limits, restart = manifest.limits, manifest.restart
    lines.append(
        f"{pad}{'limits':<9}memory {format_size(limits.memory)}, pids {limits.pids}, "
        f"cpu {limits.cpu:g}, open files {limits.open_files}, tmp {format_size(limits.tmp)}"
    )
    backoff = f"{format_duration(restart.backoff_initial)}..{format_duration(restart.backoff_max)}"
    lines.append(
        f"{pad}{'restart':<9}{restart.policy}, at most {restart.max_restarts} in "
        f"{format_duration(restart.window)}, back-off {backoff}"
    )
    lines.extend(_update_lines(report, manifest, pad))
    start = None if report.app is None else report.app.start_policy(manifest.name)
    if start is not None and start.on_demand:
        idle = "never" if start.idle_stop is None else format_duration(start.idle_stop)
        woken = f"; woken by events {', '.join(start.wake_on)}" if start.wake_on else ""
        lines.append(f"{pad}{'start':<9}on demand, idle stop {idle}{woken}")
    grant = report.grants.get(manifest.name)
    caps = [] if grant is None else [str(cap) for cap in grant.capabilities]
    if not caps:
        lines.append(f"{pad}{'grants':<9}nothing")
        return lines + _env_lines(grant, pad)
    mounts = {} if grant is None else {m.view: m for m in grant.mounts}
    width = max(len(cap) for cap in caps)
    for index, cap in enumerate(caps):
        label = "grants" if index == 0 else ""
        text = f"{pad}{label:<9}{cap}"
        view = cap.split(":", 2)[2].partition("?")[0].rstrip("/") if cap.startswith("fs:") else None
        mount = mounts.get(view or "")
        if mount is not None:
            quota = f", quota {format_size(mount.quota)}" if mount.quota is not None else ""
            quota += f", {mount.inodes} inodes" if mount.inodes is not None else ""
            mode = "cow" if mount.storage == "cow" else mount.mode
            source = "private storage" if mount.storage == "private" else f"volume {mount.volume}"
            text = f"{text:<{len(pad) + 9 + width}}  <- {source} ({mode}{quota})"
        lines.append(text.rstrip())
    return lines + _env_lines(grant, pad)


def _update_text(update: UpdatePolicy) -> tuple[str, str]:
    """How an update goes, and when it is rolled back: two lines of text."""
    return (
        f"probation {format_duration(update.probation)}, keep {format_duration(update.keep)}, "
        f"drain {format_duration(update.drain)}, queue {update.queue}, "
        f"state {format_size(update.state_max)}",
        f"rolled back on {update.crashes} crash{'' if update.crashes == 1 else 'es'}, "
        f"error rate {update.error_rate:g} over {update.min_calls} calls "
        f"or p99 {update.p99_ratio:g}x the old",
    )


def _update_lines(report: CheckReport, manifest: FeatureManifest, pad: str) -> list[str]:
    """How the feature is updated, when the app changed the default, and forward_only."""
    lines: list[str] = []
    update = (
        DEFAULT_UPDATE_POLICY if report.app is None else report.app.update_policy(manifest.name)
    )
    if update != DEFAULT_UPDATE_POLICY:
        how, undo = _update_text(update)
        lines += [f"{pad}{'update':<9}{how}", f"{pad}{'':<9}{undo}"]
    if manifest.forward_only:
        label = "" if lines else "update"
        lines.append(f"{pad}{label:<9}forward only: a failed update is stopped, not rolled back")
    variants = (
        DEFAULT_VARIANT_POLICY if report.app is None else report.app.variant_policy(manifest.name)
    )
    if variants != DEFAULT_VARIANT_POLICY:
        mode = ", shadow" if variants.shadow else ""
        lines.append(
            f"{pad}{'variants':<9}keyed by {variants.sticky}{mode}, storage {variants.storage}"
        )
    return lines


def _plugin_lines(policy: Policy | None) -> list[str]:
    """What ``[plugins]`` lets a plugin installed at run time be granted."""
    if policy is None:
        return [
            "",
            "plugins: no [plugins] table, so a plugin installed at run time is granted nothing",
        ]
    lines = ["", "plugins may be granted at most:"]
    caps = [str(cap) for cap in policy.capabilities()]
    lines += [f"  {cap}" for cap in caps] or ["  nothing"]
    for approval in policy.fs:
        mode = "cow" if approval.storage == "cow" else approval.mode
        source = "private storage" if approval.storage == "private" else f"volume {approval.volume}"
        lines.append(f"  view {approval.path} <- {source} ({mode})")
    if policy.env:
        lines.append("  env " + ", ".join(var.name for var in policy.env))
    if policy.update != DEFAULT_UPDATE_POLICY:
        how, undo = _update_text(policy.update)
        lines += [f"  update {how}", f"         {undo}"]
    return lines


def _env_lines(grant: FeatureGrant | None, pad: str) -> list[str]:
    """The variables the app sets for a feature: names and where each value comes from
    (a literal's value is not shown: it may be a secret)."""
    if grant is None or not grant.env:
        return []
    shown = [
        var.name if var.from_host is None else f"{var.name} <- host {var.from_host}"
        for var in grant.env
    ]
    return [f"{pad}{'env':<9}{', '.join(shown)}"]


def _route_lines(report: CheckReport) -> list[str]:
    if not report.routes:
        return []
    lines = ["", "routes:"]
    lines += [
        f"  call   {route.source} -> {route.target}.{route.name}"
        for route in report.routes
        if route.kind == "call"
    ]
    events: dict[tuple[str, str], list[str]] = {}
    for route in report.routes:
        if route.kind == "event":
            events.setdefault((route.name, route.source), []).append(route.target)
    for (topic, source), targets in events.items():
        lines.append(f"  event  {topic}: {source} -> {', '.join(targets)}")
    return lines


def _problem_line(problem: Problem) -> str:
    key = f" [{problem.key}]" if problem.key else ""
    return f"{problem.severity.value:<7} {problem.location}{key} {problem.message}"


def _as_text(report: CheckReport, shown: str, *, strict: bool, failed: bool) -> str:
    out: list[str] = []
    if report.app is not None:
        app = report.app
        out.append(f"app {app.name}  ({shown}/app.toml)")
        out.append(f"  strategy  {app.strategy}")
        if app.volumes:
            width = max(len(name) for name in app.volumes)
            for index, (name, written) in enumerate(app.volumes.items()):
                label = "volumes" if index == 0 else ""
                out.append(f"  {label:<9} {name:<{width}}  {written}")
        out.append("")
        out.append("features in start order:")
        for number, name in enumerate(report.start_order, 1):
            manifest = report.features[name]
            bundle = _relative(manifest.root, report.root)
            out.append(f"  {number:>2}. {name} {manifest.version}  ({bundle})")
            out.extend(_feature_lines(report, manifest))
        if not report.start_order:
            out.append("  (none)")
        out.extend(_route_lines(report))
        out.extend(_plugin_lines(app.plugins))
        stuck = [name for name in report.features if name not in report.start_order]
        if stuck:
            out.append(
                "  cannot start (a requires cycle, or a required feature with errors): "
                + ", ".join(stuck)
            )
        out.append("")
    if report.problems:
        out.append("problems:")
        out.extend(_problem_line(problem) for problem in report.problems)
        out.append("")
    errors, warnings = len(report.errors), len(report.warnings)
    counts = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if not failed:
        hint = " (--strict fails on warnings)" if warnings else ""
        out.append(f"ok: {_plural(len(report.features), 'feature')}, {counts}{hint}")
    else:
        out.append(f"failed: {counts}{' (--strict)' if strict and not errors else ''}")
    return "\n".join(out) + "\n"


# -- json -----------------------------------------------------------------------------


def _as_json(report: CheckReport, shown: str, *, failed: bool) -> dict[str, Any]:
    features = []
    for name, manifest in report.features.items():
        grant = report.grants.get(name)
        limits, restart = manifest.limits, manifest.restart
        features.append(
            {
                "name": name,
                "version": manifest.version,
                "bundle": _relative(manifest.root, report.root),
                "entry": manifest.entry,
                "description": manifest.description,
                "services": list(manifest.services),
                "topics": list(manifest.topics),
                "requires": list(manifest.requires),
                "limits": {
                    "memory": limits.memory,
                    "pids": limits.pids,
                    "cpu": limits.cpu,
                    "open_files": limits.open_files,
                    "tmp": limits.tmp,
                },
                "restart": {
                    "policy": restart.policy,
                    "max_restarts": restart.max_restarts,
                    "window": restart.window,
                    "backoff": [restart.backoff_initial, restart.backoff_max],
                },
                "forward_only": manifest.forward_only,
                "update": None
                if report.app is None
                else _update_json(report.app.update_policy(name)),
                "capabilities": [] if grant is None else [str(c) for c in grant.capabilities],
                "mounts": []
                if grant is None
                else [
                    {
                        "view": m.view,
                        "volume": m.volume,
                        "host": None if m.host is None else str(m.host),
                        "mode": m.mode,
                        "storage": m.storage,
                        "quota": m.quota,
                        "inodes": m.inodes,
                    }
                    for m in grant.mounts
                ],
                "env": []
                if grant is None
                else [{"name": v.name, "from_host": v.from_host} for v in grant.env],
            }
        )
    app = report.app
    return {
        "app": None
        if app is None
        else {
            "name": app.name,
            "strategy": app.strategy,
            "path": shown,
            "bundles": list(app.features),
        },
        "plugins": None if app is None else _policy_json(app.plugins),
        "volumes": {name: str(path) for name, path in report.volumes.items()},
        "start_order": list(report.start_order),
        "features": features,
        "routes": [
            {"kind": r.kind, "source": r.source, "target": r.target, "name": r.name}
            for r in report.routes
        ],
        "problems": [
            {
                "severity": p.severity.value,
                "path": p.path,
                "line": p.line,
                "key": p.key,
                "message": p.message,
            }
            for p in report.problems
        ],
        "summary": {
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "ok": not failed,
        },
    }


def _update_json(update: UpdatePolicy) -> dict[str, Any]:
    return msgspec.structs.asdict(update)


def _policy_json(policy: Policy | None) -> dict[str, Any] | None:
    """The ``[plugins]`` table: None when there is none (a plugin may ask for nothing)."""
    if policy is None:
        return None
    return {
        "capabilities": [str(cap) for cap in policy.capabilities()],
        "fs": [
            {
                "view": a.path,
                "volume": a.volume,
                "mode": a.mode,
                "storage": a.storage,
                "quota": a.quota,
                "inodes": a.inodes,
            }
            for a in policy.fs
        ],
        "env": [{"name": v.name, "from_host": v.from_host} for v in policy.env],
        "update": _update_json(policy.update),
    }
