"""The child side of a view server: from a fresh fork of the zygote to a serving fusefs.

Runs only in a freshly forked, single-threaded child of the zygote and never returns to
it. It hands fusefs the view and a confinement (Landlock: the runtime read-only, the
backing directories as the view needs them) applied once the view is mounted; fusefs
does the rest. Holds no secrets; never runs feature code.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import msgspec

import fusefs
from capsule._sandbox import _landlock
from capsule._sandbox import _syscalls as sc
from capsule._spawn._bootstrap import EXIT_BOOTSTRAP, close_all_but, reset_signals
from capsule._spawn._protocol import ViewRequest

__all__ = ["run"]

_STDERR = 2


def _confine(runtime: Sequence[str]) -> fusefs.Confine:
    def confine(needed: Sequence[tuple[str, bool]]) -> None:
        rules = [_landlock.PathRule(path, execute=True) for path in runtime]
        rules += [
            _landlock.PathRule(path, write=writable, refer=writable) for path, writable in needed
        ]
        _landlock.restrict(rules)

    return confine


def run(request: ViewRequest, *, control: int, runtime: Sequence[str]) -> NoReturn:
    """Serve ``request``'s view until the supervisor says stop or goes away; never returns."""
    try:
        reset_signals()
        os.setsid()
        close_all_but({_STDERR, control})
        for procs in request.cgroup_procs:
            with open(procs, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        view = msgspec.msgpack.decode(request.view, type=fusefs.ViewSpec)
        confine = _confine(runtime) if request.landlock else None
        fusefs.serve(view, request.mountpoint, socket.socket(fileno=control), confine=confine)
    except BaseException as exc:  # the supervisor sees the exit; say why on stderr
        detail = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"capsule view server for {request.name}: {detail}")
        os._exit(EXIT_BOOTSTRAP)
    os._exit(0)
