"""``capsule run APP``: its arguments (run an app in the foreground, with a status view and a
control socket).

Arguments only: it must not import what the command runs (``_runner``, imported when it
runs), so that ``capsule --help`` stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from capsule._cli._common import lazy, positive_seconds

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    run = sub.add_parser(
        "run",
        help="run an app in the foreground with a live status view and a control socket",
        description=(
            "Start every feature of APP in its own sandboxed container and keep the app "
            "running until Ctrl-C, SIGTERM or SIGHUP, which stop every feature and remove "
            "every mount, cgroup and temporary directory before exiting (a second Ctrl-C "
            "while stopping exits at once; the next start removes what is left). On a "
            "terminal a live table shows each feature's state, restarts, message rate, "
            "denials and memory; otherwise a status line per feature is printed every "
            "--interval seconds. The supervisor's log lines go to stderr. While it runs, "
            "`capsule ps`, `top`, `call`, `start`, `stop`, `restart` and `audit --follow` "
            "reach it through its control socket (a 0600 Unix socket in the runtime "
            "directory, with an admin secret only its user can read). Exit status: 0 "
            "stopped by a signal, 1 the app could not run (one line on stderr), 2 usage "
            "error, 130 forced by a second signal."
        ),
    )
    run.add_argument("app", metavar="APP", help="app directory (the one holding app.toml)")
    run.add_argument(
        "--audit",
        metavar="PATH",
        type=Path,
        help=(
            "write the audit log (JSON lines) to PATH "
            "(default $XDG_STATE_HOME/capsule/audit/APP/RUN.jsonl)"
        ),
    )
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        help=(
            "keep the features' private and copy-on-write storage beneath DIR "
            "(default $XDG_STATE_HOME/capsule/state/APP)"
        ),
    )
    run.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="the supervisor's log lines on stderr: console (default) or JSON, one a line",
    )
    run.add_argument(
        "--interval",
        metavar="SECONDS",
        type=positive_seconds,
        help=(
            "seconds between status refreshes (default 1 on a terminal, 30 otherwise, where "
            "each feature gets a status line)"
        ),
    )
    run.add_argument("--no-status", action="store_true", help="show no status, only the log lines")
    for option, default, what in (
        ("--start-timeout", 10.0, "for a feature to become ready"),
        ("--stop-timeout", 5.0, "for a feature to stop before it is killed"),
        ("--call-timeout", 30.0, "for a call's reply, unless the call says otherwise"),
    ):
        run.add_argument(
            option,
            metavar="SECONDS",
            type=positive_seconds,
            default=default,
            help=f"seconds to wait {what} (default {default:g})",
        )
    run.set_defaults(handler=lazy("capsule._cli._runner", "run"))
