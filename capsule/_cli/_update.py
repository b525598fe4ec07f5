"""``capsule update``, ``rollback`` and ``history``: replace a running feature's version live,
go back, and list the versions it ran.

Must not hold logic of its own: it sends one request to the app's control socket and
prints the answer.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from capsule._cli._common import CONTROL_EXIT_STATUS, EXIT_OK, add_format_option
from capsule._cli._target import add_app_option, connect

if TYPE_CHECKING:
    from capsule._supervisor._history import VersionRecord
    from capsule._supervisor._records import UpdateReport

__all__ = ["builtins", "register", "render_report"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    update = sub.add_parser(
        "update",
        help="replace a running feature by a new version of it, live",
        description=(
            "Start the bundle in DIR beside the running FEATURE, hold new calls while calls in "
            "flight drain and its state moves over, switch, and keep the old version frozen "
            "while the new one is on probation (it rolls back by itself if it crashes, errs "
            "or slows down; see [policy.FEATURE] update in app.toml). A bundle that asks for "
            "more than the running version needs --approve; one that asks for what the "
            "app's policy does not approve is refused." + CONTROL_EXIT_STATUS
        ),
    )
    update.add_argument("feature", metavar="FEATURE", help="the feature to update")
    update.add_argument("bundle", metavar="DIR", help="the new version's bundle directory")
    update.add_argument(
        "--approve",
        action="store_true",
        help="grant what the new version asks for beyond the running one (see --dry-run)",
    )
    update.add_argument(
        "--dry-run",
        action="store_true",
        help="print the capability diff and what the update would do; change nothing",
    )
    add_format_option(update)
    add_app_option(update)
    update.set_defaults(handler=_update)
    rollback = sub.add_parser(
        "rollback",
        help="go back to the version a feature ran before its last update",
        description=(
            "While the old version is kept frozen after an update, thaw it and switch calls "
            "back at once; after that, stop FEATURE and start the previous version in its "
            "history (capsule history)." + CONTROL_EXIT_STATUS
        ),
    )
    rollback.add_argument("feature", metavar="FEATURE", help="the feature to roll back")
    add_format_option(rollback)
    add_app_option(rollback)
    rollback.set_defaults(handler=_rollback)
    history = sub.add_parser(
        "history",
        help="list the versions a feature of a running app ran, oldest first",
        description=(
            "The versions FEATURE ran (started, updated, rolled back), as the app keeps them "
            "in its state directory across restarts." + CONTROL_EXIT_STATUS
        ),
    )
    history.add_argument("feature", metavar="FEATURE", help="the feature's name")
    add_format_option(history)
    add_app_option(history)
    history.set_defaults(handler=_history)


def _update(args: argparse.Namespace) -> int:
    with connect(args) as client:
        done = client.update(
            args.feature,
            os.path.abspath(args.bundle),  # read by the app's process, from its own cwd
            approve=args.approve,
            dry_run=args.dry_run,
        )
    _print_report(done.report, args.format)
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    with connect(args) as client:
        done = client.rollback(args.feature)
    _print_report(done.report, args.format)
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    with connect(args) as client:
        versions = client.history(args.feature)
    if args.format == "json":
        print(json.dumps(builtins(versions.records), indent=2))
        return EXIT_OK
    if not versions.records:
        print(f"{versions.feature}: no versions recorded")
    for record in versions.records:
        print(_history_line(record))
    return EXIT_OK


def _history_line(record: VersionRecord) -> str:
    at = datetime.fromtimestamp(record.at, UTC).isoformat(timespec="seconds")
    reason = f"  ({record.reason})" if record.reason else ""
    return f"{at}  {record.event:<11}  {record.version:<12}  {record.bundle}{reason}"


def render_report(report: UpdateReport) -> str:
    """An UpdateReport as the lines ``capsule update`` and ``rollback`` print."""
    if report.action == "dry-run":
        head = f"{report.feature}: {report.from_version} -> {report.to_version} (dry run)"
    elif report.action == "rollback":
        head = f"{report.feature}: rolled back {report.from_version} -> {report.to_version}"
    else:
        head = f"{report.feature}: updated {report.from_version} -> {report.to_version}"
    lines = [head]
    if report.diff:
        lines += ["capabilities:", *(f"  {line}" for line in report.diff.splitlines())]
    lines += [f"- {step}" for step in report.steps]
    if report.action != "dry-run" and not report.cold:
        state = "none moved" if report.state_bytes is None else f"{report.state_bytes} bytes"
        lines.append(
            f"calls held {report.pause * 1000:.1f} ms ({report.held} held, "
            f"{report.stragglers} finished on the old version); state: {state}"
        )
    return "\n".join(lines)


def _print_report(report: UpdateReport, form: str) -> None:
    if form == "json":
        print(json.dumps(builtins(report), indent=2))
    else:
        print(render_report(report))


def builtins(value: object) -> Any:
    """``value`` as JSON-ready builtins (it came with msgspec: `capsule --help` needs none)."""
    import msgspec  # noqa: PLC0415

    return msgspec.to_builtins(value)
