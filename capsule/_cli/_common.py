"""Shared pieces of the command line: exit codes, the parser class, argument checks.

Must not import subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn, TypeAlias

__all__ = [
    "CONTROL_EXIT_STATUS",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "Handler",
    "Parser",
    "add_format_option",
    "app_dir_problem",
    "lazy",
    "positive_seconds",
    "printable",
]

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2
#: the end of the description of a command that sends one request to the control socket
CONTROL_EXIT_STATUS: Final = (
    " Exit status: 0 ok, 1 the app refused or failed the request (the error on stderr), "
    "2 usage error."
)

Handler: TypeAlias = Callable[[argparse.Namespace], int]
"""What runs a command: its parsed arguments in, its exit status out."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def lazy(module: str, name: str) -> Handler:
    """The handler ``name`` of ``module``, imported only when its command runs.

    Parsing the command line (``capsule --help`` too) then imports no command's
    dependencies: ``capsule ps`` never loads the supervisor, trio or pyfuse3."""

    def handler(args: argparse.Namespace) -> int:
        run: Handler = getattr(importlib.import_module(module), name)
        return run(args)

    handler.__qualname__ = f"{module}.{name}"
    return handler


def add_format_option(
    parser: argparse.ArgumentParser, *, help: str = "output format (default text)"
) -> None:
    """``--format text|json``, text by default."""
    parser.add_argument("--format", choices=("text", "json"), default="text", help=help)


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def app_dir_problem(command: str, app: str) -> bool:
    """Print one line and return True when ``app`` is not an app directory."""
    path = Path(app)
    if not path.is_dir():
        reason = "does not exist" if not path.exists() else "is not a directory"
    elif not (path / "app.toml").is_file():
        reason = "has no app.toml"
    else:
        return False
    print(
        f"capsule {command}: error: {app} {reason} (APP is an app directory with app.toml)",
        file=sys.stderr,
    )
    return True


def printable(text: str, *, keep: str = "") -> str:
    """``text`` safe to show on a terminal: every control character is escaped.

    Features write what they like into their output, topics and file names; shown raw,
    an escape sequence would retitle the terminal, clear it or paint fake lines. C0 and C1
    controls, DEL and other non-printable characters become their Python escapes
    (``\\x1b``); characters in ``keep`` (a traceback's newlines) are left as they are.
    """
    return "".join(ch if ch.isprintable() or ch in keep else ascii(ch)[1:-1] for ch in text)
