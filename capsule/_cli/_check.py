"""``capsule check`` and ``capsule graph``: their arguments (show an app, its grants and its
problems).

Arguments only: it must not import what the command runs (``_check_report``, imported when it
runs), so that ``capsule --help`` stays light.
"""

from __future__ import annotations

import argparse
from typing import Any

from capsule._cli._common import add_format_option, lazy

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    check = sub.add_parser(
        "check",
        help="check an app's manifests and show what each feature is granted",
        description=(
            "Check app.toml and every feature bundle it lists. Prints the features in start "
            "order with the capabilities each receives, then every problem found. Exit status: "
            "0 no errors, 1 problems found, 2 usage error."
        ),
    )
    check.add_argument("app", metavar="APP", help="app directory (the one holding app.toml)")
    check.add_argument("--strict", action="store_true", help="count warnings as problems too")
    add_format_option(check)
    check.set_defaults(handler=lazy("capsule._cli._check_report", "check"))
    graph = sub.add_parser(
        "graph",
        help="print an app's features, routes, volumes and network destinations as Graphviz DOT",
        description=(
            "Print the app as a Graphviz DOT graph on stdout (render it with "
            "`capsule graph APP | dot -Tsvg > app.svg`). Exit status 1 when the app has errors: "
            "the graph then shows only the parts that check cleanly."
        ),
    )
    graph.add_argument("app", metavar="APP", help="app directory (the one holding app.toml)")
    graph.set_defaults(handler=lazy("capsule._cli._check_report", "graph"))
