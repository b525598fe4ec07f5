"""``capsule plugin add|remove|list``: install feature bundles into a running app and remove them.

Must not hold logic of its own: it asks the app's control socket to review, install, remove
or list, and prints the answer (asking on a terminal before approving a widening).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsule._cli._common import (
    CONTROL_EXIT_STATUS,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    add_format_option,
)
from capsule._cli._target import add_app_option, connect
from capsule.errors import ConfigError

if TYPE_CHECKING:
    from capsule._control._protocol import PluginReview

__all__ = ["register"]


def _drain(text: str) -> float:
    from capsule._units import parse_duration  # noqa: PLC0415 - decimal: not for `--help`

    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if seconds > 3600:
        raise argparse.ArgumentTypeError(f"at most 1h, not {text!r}")
    return seconds


def register(sub: argparse._SubParsersAction[Any]) -> None:
    plugin = sub.add_parser(
        "plugin",
        help="install feature bundles into a running app, remove them, list them",
        description=(
            "Manage the plugins of a running app (started with `capsule run`): feature "
            "bundles that are not in its app.toml, granted what they ask for within the "
            "app's [plugins] policy, started again with the app until removed."
        ),
    )
    verbs = plugin.add_subparsers(dest="verb", metavar="VERB", parser_class=type(plugin))
    verbs.required = True
    add = verbs.add_parser(
        "add",
        help="install a feature bundle as a plugin",
        description=(
            "Check the bundle DIR against the app's [plugins] policy, show what it would be "
            "granted, then start it and record it. A request the policy does not approve "
            "refuses it; a grant that widens what the app grants needs --approve (asked on a "
            "terminal; refused otherwise, with the diff)." + CONTROL_EXIT_STATUS
        ),
    )
    add.add_argument(
        "bundle", metavar="DIR", help="the feature bundle (a directory with capsule.toml)"
    )
    add.add_argument("--approve", action="store_true", help="approve what the plugin asks for")
    add.add_argument(
        "--dry-run", action="store_true", help="show what it would be granted, install nothing"
    )
    add_app_option(add)
    add.set_defaults(handler=_add)
    remove = verbs.add_parser(
        "remove",
        help="uninstall a plugin",
        description=(
            "Uninstall the plugin NAME: calls to it fail at once, calls in flight get --drain "
            "to finish, then it stops and its tokens, view and cgroup go; --purge deletes its "
            "private storage too." + CONTROL_EXIT_STATUS
        ),
    )
    remove.add_argument("feature", metavar="NAME", help="the plugin's feature name")
    remove.add_argument(
        "--drain",
        metavar="DURATION",
        type=_drain,
        default=5.0,
        help="how long calls in flight may take to finish (default 5s)",
    )
    remove.add_argument(
        "--purge", action="store_true", help="delete its private storage and copy-on-write changes"
    )
    add_app_option(remove)
    remove.set_defaults(handler=_remove)
    listing = verbs.add_parser(
        "list",
        help="list the installed plugins",
        description="List the plugins of a running app with their version, state and bundle."
        + CONTROL_EXIT_STATUS,
    )
    add_format_option(listing)
    add_app_option(listing)
    listing.set_defaults(handler=_list)


def _show(review: PluginReview, bundle: str) -> str:
    diff = review.diff or "  (nothing)"
    return f"plugin {review.feature} {review.version} from {bundle} would be granted:\n{diff}\n"


def _confirm(review: PluginReview) -> bool:
    answer = input(f"install {review.feature} {review.version} with this access? [y/N] ")
    return answer.strip().lower() in {"y", "yes"}


def _add(args: argparse.Namespace) -> int:
    bundle = os.path.abspath(args.bundle)
    if not Path(bundle, "capsule.toml").is_file():
        print(
            f"capsule plugin add: error: {args.bundle} is not a feature bundle (no capsule.toml)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    with connect(args) as client:
        review = client.plugin_review(bundle)
        if args.dry_run:
            print(_show(review, bundle), end="")
            if review.widens:
                print("it widens what the app grants: installing it needs --approve")
            return EXIT_OK
        approve = args.approve
        if review.widens and not approve:
            print(_show(review, bundle), end="", file=sys.stderr)
            if sys.stdin.isatty() and sys.stdout.isatty():
                approve = _confirm(review)
            if not approve:
                print(
                    f"capsule plugin add: refused: {review.feature} would be granted more than "
                    "the app grants now; rerun with --approve to install it",
                    file=sys.stderr,
                )
                return EXIT_PROBLEMS
        done = client.plugin_add(bundle, approve=approve)
    print(f"{done.feature}: {done.state}")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    with connect(args) as client:
        done = client.plugin_remove(args.feature, drain=args.drain, purge=args.purge)
    print(f"{done.feature}: {done.state}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        plugins = client.plugins()
    if args.format == "json":
        rows = [
            {
                "name": p.name,
                "version": p.version,
                "state": p.state,
                "problem": p.problem,
                "bundle": p.bundle,
                "installed": p.installed,
                "capabilities": list(p.capabilities),
            }
            for p in plugins
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not plugins:
        print("no plugins installed")
        return EXIT_OK
    width = max(len(p.name) for p in plugins)
    for p in plugins:
        when = datetime.fromtimestamp(p.installed, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        state = p.state if p.problem is None else f"{p.state}: {p.problem}"
        print(f"{p.name:<{width}}  {p.version:<10} {when}  {p.bundle}  {state}")
    return EXIT_OK
