"""The ``capsule`` command line: argument parsing and error presentation.

Must not hold logic of its own: each subcommand calls the public API and prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from capsule import __version__
from capsule._cli._common import EXIT_PROBLEMS, Handler, Parser
from capsule.errors import CapsuleError

__all__ = ["main", "run"]


def build_parser() -> argparse.ArgumentParser:
    # each module only declares its arguments; what a command runs is imported when it runs
    from capsule._cli import (  # noqa: PLC0415 - keep `capsule --version` lighter still
        _audit,
        _call,
        _check,
        _doctor,
        _plugin,
        _ps,
        _run,
        _token,
        _update,
        _variants,
    )

    parser = Parser(
        prog="capsule",
        description="Run the features of an application in isolated, capability-scoped containers.",
    )
    parser.add_argument("--version", action="version", version=f"capsule {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show full tracebacks instead of one-line errors, and debug log lines",
    )
    parser.set_defaults(logs=True)  # a command talking to a running app says False
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _run.register(sub)
    _check.register(sub)
    _ps.register(sub)
    _call.register(sub)
    _update.register(sub)
    _variants.register(sub)
    _plugin.register(sub)
    _audit.register(sub)
    _token.register(sub)
    _doctor.register(sub)
    return parser


def _configure_logging(*, debug: bool) -> None:
    """Log lines go to stderr; only with --debug below the error level."""
    import structlog  # noqa: PLC0415 - only for commands that run what logs

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.ERROR
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.logs:
        _configure_logging(debug=args.debug)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (CapsuleError, OSError) as exc:
        if args.debug:
            raise
        print(f"capsule: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        return 130


def run() -> NoReturn:
    sys.exit(main())
