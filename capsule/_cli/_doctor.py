"""``capsule doctor``: its arguments (which isolation mechanisms this machine offers).

Arguments only: it must not import what the command runs (``_doctor_report``, imported when it
runs), so that ``capsule --help`` stays light.
"""

from __future__ import annotations

import argparse
from typing import Any

from capsule._cli._common import add_format_option, lazy

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="show which isolation mechanisms this machine offers, and how to get the rest",
        description=(
            "Probe this machine for the mechanisms capsule isolates containers with (user "
            "namespaces, fuse, landlock, seccomp, cgroups) and print each one as ok or missing, "
            "with the fix for what is missing, then the isolation level they add up to. Changes "
            "nothing. Exit status: 0 full isolation, 1 reduced or none, 2 usage error."
        ),
    )
    add_format_option(doctor)
    doctor.set_defaults(handler=lazy("capsule._cli._doctor_report", "doctor"))
