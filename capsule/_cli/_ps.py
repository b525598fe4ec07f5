"""``capsule ps`` and ``capsule top``: the features of a running app, once or refreshed.

Must not hold logic of its own: it asks the app's control socket for a snapshot and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from capsule._cli._common import EXIT_OK, add_format_option, positive_seconds
from capsule._cli._status import as_json, rates, rich_view, text_table
from capsule._cli._target import add_app_option, connect

if TYPE_CHECKING:
    from capsule._control._client import ControlClient
    from capsule._control._protocol import Snapshot

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    ps = sub.add_parser(
        "ps",
        help="list the features of a running app with their state and counters",
        description=(
            "Ask a running app (started with `capsule run`) for its features: state, pid, "
            "restarts, uptime, memory, calls, messages denied by the broker and file "
            "operations denied by the feature's view. Exit status: 0 ok, 1 no such app or "
            "it does not answer, 2 usage error."
        ),
    )
    add_app_option(ps)
    add_format_option(ps)
    ps.set_defaults(handler=_ps)
    top = sub.add_parser(
        "top",
        help="show the features of a running app, refreshed, with message, call and cpu rates",
        description=(
            "Like `capsule ps`, refreshed every --interval seconds, with each feature's "
            "messages and calls per second and cpu use over the last interval. A live table "
            "on a terminal, a new frame each interval otherwise. Ctrl-C ends it. Exit status: "
            "0 ok, 1 no such app or it stopped answering, 2 usage error."
        ),
    )
    add_app_option(top)
    top.add_argument(
        "--interval",
        metavar="SECONDS",
        type=positive_seconds,
        default=1.0,
        help="seconds between refreshes (default 1)",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame (rates over one interval) and exit",
    )
    top.set_defaults(handler=_top)


def _ps(args: argparse.Namespace) -> int:
    with connect(args) as client:
        snapshot = client.status()
    if args.format == "json":
        print(json.dumps(as_json(snapshot), indent=2))
    else:
        print(text_table(snapshot), end="")
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    with connect(args) as client:
        previous = client.status()
        if args.once:
            time.sleep(args.interval)
            current = client.status()
            print(text_table(current, rates(previous, current)), end="")
            return EXIT_OK
        try:
            if sys.stdout.isatty():
                _live(client, previous, args.interval)
            else:
                while True:
                    time.sleep(args.interval)
                    current = client.status()
                    print(text_table(current, rates(previous, current)), flush=True)
                    previous = current
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def _live(client: ControlClient, previous: Snapshot, interval: float) -> None:
    from rich.live import Live  # noqa: PLC0415 - rich only for a terminal

    footer = "Ctrl-C to quit"
    with Live(auto_refresh=False) as live:
        live.update(rich_view(previous, {}, width=live.console.width, footer=footer), refresh=True)
        while True:
            time.sleep(interval)
            current = client.status()
            view = rich_view(
                current, rates(previous, current), width=live.console.width, footer=footer
            )
            live.update(view, refresh=True)
            previous = current
