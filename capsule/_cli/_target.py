"""Choosing the running app a command talks to: the ``--app`` option and the connection.

Must not hold logic of its own: the control package finds runs and speaks the protocol.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capsule._control._client import ControlClient

__all__ = ["add_app_option", "connect"]


def add_app_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        metavar="NAME",
        help="the running app to talk to, by name or pid (default: the only one running)",
    )
    # it only talks to the app's control socket: nothing in this process logs
    parser.set_defaults(logs=False)


def connect(args: argparse.Namespace) -> ControlClient:
    """A client of the control socket of the app ``--app`` selects."""
    # imported here: parsing the command line (`capsule --help`) needs no msgspec
    from capsule._control._client import ControlClient  # noqa: PLC0415
    from capsule._control._runs import running_apps, select_app  # noqa: PLC0415

    return ControlClient(select_app(running_apps(), args.app))
