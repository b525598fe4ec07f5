"""``capsule variants set|status|promote|abort``: run versions of a feature side by side,
see how each does, keep one.

Must not hold logic of its own: it sends one request to the app's control socket and
prints the answer.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from capsule._cli._common import CONTROL_EXIT_STATUS, EXIT_OK, add_format_option
from capsule._cli._target import add_app_option, connect
from capsule._cli._update import builtins, render_report

if TYPE_CHECKING:
    from capsule._control._protocol import VariantsReport

__all__ = ["parse_share", "register"]


def parse_share(text: str) -> tuple[str, float]:
    """``VERSION=PERCENT`` or ``DIR=PERCENT`` (a bundle directory, made absolute)."""
    where, sep, share = text.rpartition("=")
    if not sep or not where:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected VERSION=PERCENT or DIR=PERCENT, such as 1.2.0=90"
        )
    try:
        percent = float(share)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {share!r} is not a percentage") from None
    if os.path.isdir(where):  # read by the app's process, from its own cwd
        where = os.path.abspath(where)
    return where, percent


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "variants",
        help="run versions of a feature side by side, split its calls, keep one",
        description=(
            "A/B variants of a running FEATURE: each version in its own container, the "
            "broker sending each call to one of them by its key (see [policy.FEATURE] "
            "variants in app.toml and docs/guide/variants.md)." + CONTROL_EXIT_STATUS
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = actions.add_parser(
        "set",
        help="start variants, or ramp their split",
        description=(
            "Each SHARE is VERSION=PERCENT (the running version or a variant running already) "
            "or DIR=PERCENT (a bundle directory); the percentages add up to 100. Raising a "
            "variant's share never moves a key away from it." + CONTROL_EXIT_STATUS
        ),
    )
    set_.add_argument("feature", metavar="FEATURE")
    set_.add_argument("shares", metavar="SHARE", nargs="+", type=parse_share)
    set_.add_argument("--sticky", help="what a call is keyed by: caller or payload.FIELD")
    set_.add_argument(
        "--shadow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve every call from the running version and mirror the candidates' share "
        "(--no-shadow: leave shadow mode, the candidates serve their shares)",
    )
    set_.add_argument(
        "--approve",
        action="store_true",
        help="grant what a variant asks beyond the running one",
    )
    status = actions.add_parser("status", help="calls, errors, latency, memory and cpu per variant")
    status.add_argument("feature", metavar="FEATURE")
    promote = actions.add_parser(
        "promote",
        help="keep one variant: the others stop; a candidate replaces the running version",
    )
    promote.add_argument("feature", metavar="FEATURE")
    promote.add_argument("version", metavar="VERSION")
    abort = actions.add_parser("abort", help="stop every variant but the running version")
    abort.add_argument("feature", metavar="FEATURE")
    for action in (set_, status, promote, abort):
        add_format_option(action, help="output format")
        add_app_option(action)
        action.set_defaults(handler=_variants)


def _variants(args: argparse.Namespace) -> int:
    with connect(args) as client:
        answer = client.variants(
            args.action,
            args.feature,
            shares=dict(getattr(args, "shares", None) or ()),
            sticky=getattr(args, "sticky", None),
            shadow=getattr(args, "shadow", None),
            approve=getattr(args, "approve", False),
            version=getattr(args, "version", None),
        )
    _print(args.feature, answer, args.format)
    return EXIT_OK


def _print(feature: str, answer: VariantsReport, form: str) -> None:
    if form == "json":
        print(json.dumps(builtins(answer), indent=2))
        return
    if answer.status is not None:
        print(answer.status.table())
    elif answer.report is None:
        print(f"{feature}: runs no variants")
    if answer.report is not None:
        print(render_report(answer.report))
