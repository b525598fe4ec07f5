"""``capsule audit [FILE]``: show an audit log, filtered, once or as it grows.

Must not hold logic of its own: the reader parses, this module filters and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from capsule._broker._audit_read import AuditEvent, AuditProblem, read_events
from capsule._cli._common import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, add_format_option, printable
from capsule._cli._target import add_app_option, connect
from capsule._control._errors import ControlError

__all__ = ["as_text", "register", "selected"]

_DENIALS: Final = frozenset({"deny", "refuse"})
#: fields shown in their own column; the others follow as key=value.
_COLUMNS: Final = frozenset(
    {"time", "ts", "app", "run", "event", "feature", "decision", "reason", "token", "capability"}
)
_TOKEN_HEX: Final = 12


def register(sub: argparse._SubParsersAction[Any]) -> None:
    audit = sub.add_parser(
        "audit",
        help="show the security decisions recorded in an audit log",
        description=(
            "Print the events of an audit log (one JSON object a line, written by the broker) "
            "one line each: time, decision, feature, capability or event, token id, reason. "
            "Without FILE, the log of the running app (started with `capsule run`; --app "
            "chooses one when several run). Exit status: 0 ok, 1 a line that is not an audit "
            "event, the file cannot be read or no app is running, 2 usage error."
        ),
    )
    audit.add_argument(
        "file",
        metavar="FILE",
        type=Path,
        nargs="?",
        help="the audit log (.jsonl); default: the running app's",
    )
    add_app_option(audit)
    audit.add_argument(
        "--feature", metavar="F", help="only events of feature F (and delegations to F)"
    )
    audit.add_argument("--denied", action="store_true", help="only deny and refuse decisions")
    audit.add_argument(
        "--follow", action="store_true", help="keep printing events as they are appended"
    )
    add_format_option(audit)
    audit.set_defaults(handler=_audit)


def _running_log(args: argparse.Namespace) -> Path:
    """The audit log of the running app ``--app`` selects, as its control socket says."""
    with connect(args) as client:
        snapshot = client.status()
    if snapshot.audit_path is None:
        raise ControlError(f"app {snapshot.app} (pid {snapshot.pid}) keeps no audit log")
    return Path(snapshot.audit_path)


def _audit(args: argparse.Namespace) -> int:
    if args.file is not None and args.app is not None:
        print("capsule audit: error: give FILE or --app, not both", file=sys.stderr)
        return EXIT_USAGE
    path = args.file if args.file is not None else _running_log(args)
    problems = 0
    try:
        for item in read_events(path, follow=args.follow):
            if isinstance(item, AuditProblem):
                problems += 1
                print(
                    f"capsule: {item.path}:{item.line}: not an audit event ({item.message})",
                    file=sys.stderr,
                    flush=True,
                )
            elif selected(item, feature=args.feature, denied=args.denied):
                line = item.raw if args.format == "json" else as_text(item)
                print(line, flush=args.follow)
    except KeyboardInterrupt:
        if not args.follow:
            raise
    except BrokenPipeError:
        # The reader (`| head`) has gone: stop quietly, and let the exit flush nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PROBLEMS if problems else EXIT_OK


def selected(event: AuditEvent, *, feature: str | None, denied: bool) -> bool:
    """Whether ``event`` passes the ``--feature`` and ``--denied`` filters."""
    if feature is not None and feature not in (event.get("feature"), event.get("to")):
        return False
    return (
        not denied or event.get("decision") in _DENIALS or event.get("event") == "deny-suppressed"
    )


def _clean(value: Any) -> str:
    """Text safe for a terminal: control characters (from container input) are escaped."""
    return printable(value if isinstance(value, str) else json.dumps(value))


def as_text(event: AuditEvent) -> str:
    """One aligned line: ts, decision, feature, capability or event, token, reason, extras."""
    token = event.get("token")
    columns = [
        f"{_clean(event.get('ts', '-')):<24}",
        f"{_clean(event.get('decision', '-')):<8}",
        f"{_clean(event.get('feature', '-')):<12}",
        f"{_clean(event.get('capability') or event.get('event', '-')):<28}",
        f"{'token ' + _clean(token)[:_TOKEN_HEX] if token else '':<18}",
        _clean(event.get("reason", "")),
    ]
    extras = {k: v for k, v in event.data.items() if k not in _COLUMNS and k != "count"}
    columns += [f"{_clean(key)}={_clean(extras[key])}" for key in sorted(extras)]
    if "count" in event.data:
        columns.append(f"x{_clean(event.data['count'])}")
    return "  ".join(column for column in columns if column).rstrip()
