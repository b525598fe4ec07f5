"""The ``capsule`` command line: argument parsing and error presentation.

Must not hold logic of its own: each subcommand calls the public API and prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

from capsule import __version__
from capsule._cli._common import EXIT_PROBLEMS, Handler, Parser
from capsule.errors import CapsuleError

__all__ = ["main", "run"]


#: each module of the command line, in the order ``capsule --help`` lists its commands,
#: with the commands it registers
_MODULES: Final = {
    "_run": ("run",),
    "_check": ("check", "graph"),
    "_ps": ("ps", "top"),
    "_call": ("call", "start", "stop", "restart"),
    "_update": ("update", "rollback", "history"),
    "_variants": ("variants",),
    "_plugin": ("plugin",),
    "_audit": ("audit",),
    "_token": ("token",),
    "_doctor": ("doctor",),
}
_MODULE_OF: Final = {command: module for module, names in _MODULES.items() for command in names}


def _wanted(argv: Sequence[str]) -> Sequence[str]:
    """The modules whose commands ``argv`` needs: the one of the command it names (its first
    word not an option, since no option of ``capsule`` itself takes a value), or every
    one when it names none or no known one (``--help`` lists them, an error names them)."""
    command = next((word for word in argv if not word.startswith("-")), None)
    module = _MODULE_OF.get(command or "")
    return list(_MODULES) if module is None else [module]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the command line; given ``argv``, only with the command it names.

    Each module only declares its commands' arguments: what a command runs is imported
    when it runs (``_common.lazy``), so that `capsule --help` and `capsule ps` stay light.
    """
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
    for name in list(_MODULES) if argv is None else _wanted(argv):
        module = importlib.import_module(f"capsule._cli.{name}")
        module.register(sub)
    return parser


def _configure_logging(*, debug: bool) -> None:
    """Log lines go to stderr; only with --debug below the error level."""
    import logging  # noqa: PLC0415 - only for commands that run what logs

    import structlog  # noqa: PLC0415

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.ERROR
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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
