"""What ``capsule doctor`` prints: the isolation mechanisms this machine offers, as text or
JSON.

Must not hold logic of its own: the sandbox package probes; this module only explains.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from typing import Any, Final

from capsule._cli._common import EXIT_OK, EXIT_PROBLEMS
from capsule._manifest._app import WAIVABLE
from capsule._sandbox._isolation import Isolation, Mechanism, probe
from capsule._sandbox._landlock import ABI_FEATURES
from capsule._sandbox._seccomp_policy import ARGUMENT_FILTERED_SYSCALLS, DENIED_SYSCALLS
from capsule._spawn._layout import NEUTRAL_ROOT, neutral_support

__all__ = ["as_json", "as_text", "doctor"]

_NAME_WIDTH: Final = 16
_STATUS_WIDTH: Final = 8
_INDENT: Final = " " * (_NAME_WIDTH + 1 + _STATUS_WIDTH + 1)
_WIDTH: Final = 100
#: denied syscalls named in the text form; the JSON form lists every one.
_SHOWN_SYSCALLS: Final = ("mount", "unshare", "setns", "ptrace", "bpf", "kexec_load")


def doctor(args: argparse.Namespace) -> int:
    isolation = probe()
    if args.format == "json":
        print(json.dumps(as_json(isolation), indent=2))
    else:
        print(as_text(isolation), end="")
    return EXIT_OK if isolation.level == "full" else EXIT_PROBLEMS


# -- what each level means --------------------------------------------------------------


def _waivable_missing(isolation: Isolation) -> list[str]:
    return [name for name in WAIVABLE if not isolation.get(name).available]


def _meaning(isolation: Isolation) -> str:
    """One sentence on what the level means for the apps run here."""
    level = isolation.level
    if level == "none":
        return (
            "user namespaces are missing: no container can start here, whatever an app "
            "allows, until they are available."
        )
    if level == "reduced":
        waivable = _waivable_missing(isolation)
        return (
            f"{_join(waivable)} {'is' if len(waivable) == 1 else 'are'} missing: an app runs "
            "here only if it lists the missing mechanisms in [app] allow_missing of its "
            f"app.toml (allow_missing = {json.dumps(waivable)}), and its containers then run "
            "without them."
        )
    return "every isolation mechanism is available: each container runs with all of them."


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _landlock_features(abi: int) -> list[str]:
    """What each ABI level up to ``abi`` gives, oldest first."""
    return [ABI_FEATURES[level] for level in sorted(ABI_FEATURES) if level <= abi]


def _rootless_detail(isolation: Isolation) -> str:
    if isolation.rootless:
        return f"running as uid {os.geteuid()}: every container maps to that one uid"
    return "running as root: each container gets a uid and gid of its own"


def _runtime_paths() -> tuple[str, str]:
    """Where containers see the Python runtime: ``neutral`` or ``host``, and why."""
    neutral, reason = neutral_support()
    if neutral:
        return "neutral", f"beneath {NEUTRAL_ROOT}: containers learn no host path of the runtime"
    return "host", f"at their host paths ({reason}): containers can read where Python lies"


def _notes(isolation: Isolation) -> list[str]:
    """Missing mechanisms that do not count in the level, said plainly."""
    if all(m.available for m in isolation.mechanisms if m.name == "fuse"):
        return []
    return [
        "fuse is missing: it serves the volume views of containers; it does not change "
        "the isolation level."
    ]


# -- text ---------------------------------------------------------------------------------


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(
        text, width=_WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT + "  "
    )


def _mechanism_lines(isolation: Isolation, mechanism: Mechanism) -> list[str]:
    status = "ok" if mechanism.available else "missing"
    detail = mechanism.detail
    if mechanism.name == "landlock" and mechanism.available:
        detail = f"ABI {isolation.landlock_abi}"  # the probe's detail names the newest level only
    lines = [f"{mechanism.name:<{_NAME_WIDTH}} {status:<{_STATUS_WIDTH}} {detail}"]
    if not mechanism.available:
        if mechanism.fix:
            lines += _wrapped(f"fix: {mechanism.fix}")
        return lines
    if mechanism.name == "landlock":
        lines += _wrapped("gives: " + "; ".join(_landlock_features(isolation.landlock_abi)))
    elif mechanism.name == "seccomp":
        shown = [name for name in _SHOWN_SYSCALLS if name in DENIED_SYSCALLS]
        lines += _wrapped(
            f"denies {len(DENIED_SYSCALLS)} syscalls ({', '.join(shown)}, ...); checks the "
            f"arguments of {', '.join(sorted(ARGUMENT_FILTERED_SYSCALLS))}"
        )
    return lines


def as_text(isolation: Isolation) -> str:
    """The report: one line (or a few) per mechanism, then the level and what it means."""
    out: list[str] = []
    for mechanism in isolation.mechanisms:
        out += _mechanism_lines(isolation, mechanism)
    rootless = "yes" if isolation.rootless else "no"
    out.append(
        f"{'rootless':<{_NAME_WIDTH}} {rootless:<{_STATUS_WIDTH}} {_rootless_detail(isolation)}"
    )
    mode, detail = _runtime_paths()
    out.append(f"{'runtime paths':<{_NAME_WIDTH}} {mode:<{_STATUS_WIDTH}} {detail}")
    out.append("")
    out.append(f"isolation: {isolation.level}")
    out += textwrap.wrap(
        _meaning(isolation), width=_WIDTH, initial_indent="  ", subsequent_indent="  "
    )
    for note in _notes(isolation):
        out += textwrap.wrap(note, width=_WIDTH, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(out) + "\n"


# -- json ---------------------------------------------------------------------------------


def as_json(isolation: Isolation) -> dict[str, Any]:
    """The same report as a JSON-ready dict."""
    support = isolation.cgroups
    return {
        "mechanisms": [
            {
                "name": m.name,
                "status": "ok" if m.available else "missing",
                "available": m.available,
                "detail": m.detail,
                "fix": m.fix or None,
            }
            for m in isolation.mechanisms
        ],
        "landlock": {
            "abi": isolation.landlock_abi,
            "features": _landlock_features(isolation.landlock_abi),
        },
        "seccomp": {
            "denied_syscalls": sorted(DENIED_SYSCALLS),
            "argument_filtered_syscalls": sorted(ARGUMENT_FILTERED_SYSCALLS),
        },
        "cgroups": {
            "version": support.version,
            "controllers": sorted(support.controllers),
            "writable": support.writable,
            "description": support.describe(),
        },
        "rootless": isolation.rootless,
        "runtime_paths": dict(zip(("mode", "detail"), _runtime_paths(), strict=True)),
        "isolation": {
            "level": isolation.level,
            "missing": list(isolation.missing),
            "allow_missing": _waivable_missing(isolation),
            "meaning": _meaning(isolation),
            "notes": _notes(isolation),
        },
    }
