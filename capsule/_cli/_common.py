"""Shared pieces of the command line: exit codes and the parser class.

Must not import subcommands.
"""

from __future__ import annotations

import argparse
from typing import Final, NoReturn

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "Parser"]

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
