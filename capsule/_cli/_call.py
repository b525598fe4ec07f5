"""``capsule call``, ``start``, ``stop`` and ``restart``: act on a feature of a running app.

Must not hold logic of its own: it sends one request to the app's control socket and
prints the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from capsule._cli._common import CONTROL_EXIT_STATUS, EXIT_OK, EXIT_USAGE, positive_seconds
from capsule._cli._target import add_app_option, connect

__all__ = ["register"]

_LIFECYCLE: Final = {
    "start": (
        "start a stopped feature of a running app",
        "Start FEATURE in a new container and wait until it is ready; a feature that "
        "already runs is left as it is.",
    ),
    "stop": (
        "stop a feature of a running app; it stays stopped",
        "Stop FEATURE (a stop message, its grace period, then SIGKILL). It stays stopped, "
        "and calls to it fail, until `capsule start` or `capsule restart`.",
    ),
    "restart": (
        "restart a feature of a running app in a fresh container",
        "Stop FEATURE and start it again with fresh tokens; not counted against its restart "
        "limit. Starts a stopped or quarantined feature too.",
    ),
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    call = sub.add_parser(
        "call",
        help="call a service of a feature of a running app and print the JSON reply",
        description=(
            "Call SERVICE of FEATURE in a running app (started with `capsule run`), with "
            "the host's authority, and print the reply as one line of JSON (bytes as "
            "base64)." + CONTROL_EXIT_STATUS
        ),
    )
    call.add_argument("target", metavar="FEATURE.SERVICE", help="the service to call")
    call.add_argument(
        "payload",
        metavar="JSON",
        nargs="?",
        default="null",
        help="the request as JSON (default null; - reads it from stdin)",
    )
    call.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=30.0,
        help="give up (and cancel the handler) after this many seconds (default 30)",
    )
    add_app_option(call)
    call.set_defaults(handler=_call)
    for action, (summary, description) in _LIFECYCLE.items():
        command = sub.add_parser(
            action, help=summary, description=description + CONTROL_EXIT_STATUS
        )
        command.add_argument("feature", metavar="FEATURE", help="the feature's name")
        add_app_option(command)
        command.set_defaults(handler=_lifecycle, action=action)


def _call(args: argparse.Namespace) -> int:
    feature, dot, service = args.target.partition(".")
    if not (feature and dot and service):
        print(
            f"capsule call: error: {args.target!r} is not FEATURE.SERVICE (e.g. spellcheck.check)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    payload = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as exc:
        print(f"capsule call: error: JSON is not valid JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with connect(args) as client:
        reply = client.call(feature, service, payload, timeout=args.timeout)
    print(reply)
    return EXIT_OK


def _lifecycle(args: argparse.Namespace) -> int:
    with connect(args) as client:
        done = client.lifecycle(args.action, args.feature)
    print(f"{done.feature}: {done.state}")
    return EXIT_OK
