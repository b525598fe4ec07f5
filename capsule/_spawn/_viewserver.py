"""The child side of a view server: from a fresh fork of the zygote to a serving fusefs.

Runs only in a freshly forked, single-threaded child of the zygote and never returns to
it. It reads its request (the feature's name, view and mount point) from a socket of its
own, never through the zygote. It receives the directories behind the view's volume
mounts as descriptors (never their paths: the supervisor checked them), and hands fusefs
the view, those directories and a confinement (Landlock: the runtime read-only, the
backing directories as the view needs them, by descriptor) applied once the view is
mounted; fusefs does the rest.
Holds no secrets; never runs feature code.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import traceback
from collections.abc import Iterable, Sequence
from typing import NoReturn

import msgspec

import fusefs
from capsule._sandbox import _landlock
from capsule._sandbox import _syscalls as sc
from capsule._spawn._bootstrap import (
    EXIT_BOOTSTRAP,
    close_all_but,
    read_request,
    reset_signals,
    return_to_host,
)
from capsule._spawn._protocol import ROOTS_DATAGRAM, ROOTS_PER_DATAGRAM, ViewRequest

__all__ = ["run"]

_STDERR = 2
#: the zygote's import path finders, as _find_runtime_on_host replaced them
_zygote_finders: list[object] = []


def _confine(runtime: Sequence[str]) -> fusefs.Confine:
    def confine(needed: Sequence[tuple[str | int, bool]]) -> None:
        rules = [_landlock.PathRule(path, execute=True) for path in runtime]
        rules += [
            _landlock.PathRule(where, write=writable, refer=writable)
            if isinstance(where, str)
            else _landlock.PathRule(
                f"/proc/self/fd/{where}", fd=where, write=writable, refer=writable
            )
            for where, writable in needed
        ]
        _landlock.restrict(rules)

    return confine


def _receive_roots(control: socket.socket, mounts: Sequence[int]) -> dict[int, int]:
    """The directories behind ``mounts``, as descriptors the supervisor sends before anything
    else on the control socket (a batch a datagram)."""
    fds: list[int] = []
    while len(fds) < len(mounts):
        data, received, _, _ = socket.recv_fds(control, 64, ROOTS_PER_DATAGRAM)
        fds += received
        if data != ROOTS_DATAGRAM or not received:
            raise RuntimeError(f"expected the view's directories, got {data[:32]!r}")
    if len(fds) != len(mounts):
        raise RuntimeError(f"expected {len(mounts)} directories, got {len(fds)}")
    return dict(zip(mounts, fds, strict=True))


def _find_runtime_on_host(runtime: Iterable[tuple[str, str]]) -> None:
    """Point ``sys.path`` at the host's runtime directories (``runtime``: where the zygote
    sees each, where it is on the host): in the host's mount namespace, where this server
    lives, the zygote's neutral paths do not exist, and a late import must still work."""
    pairs = sorted(runtime, key=lambda pair: -len(pair[0]))
    for index, entry in enumerate(sys.path):
        for shown, source in pairs:
            if entry == shown or entry.startswith(shown.rstrip("/") + "/"):
                sys.path[index] = source + entry[len(shown) :]
                break
    # A fresh cache, the zygote's kept, never freed: freeing its finders (and their listings
    # of every directory the runtime was imported from) would write to, and so copy, some
    # 2 MiB of pages this process still shares with the zygote.
    _zygote_finders.append(sys.path_importer_cache)
    sys.path_importer_cache = {}


def run(carrier: int, *, control: int, host: int | None) -> NoReturn:
    """Serve the view of the request read from ``carrier`` until the supervisor says stop or
    goes away, in the host's mount namespace (``host``: a descriptor of it, or None when
    the zygote runs in it); never returns."""
    name = "a feature"
    try:
        reset_signals()
        os.setsid()
        return_to_host(host)
        request = read_request(carrier, ViewRequest)
        name = request.name
        _find_runtime_on_host(request.runtime)
        runtime = [source for _, source in request.runtime]
        close_all_but({_STDERR, control})
        for procs in request.cgroup_procs:
            with open(procs, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        view = msgspec.msgpack.decode(request.view, type=fusefs.ViewSpec)
        confine = _confine(runtime) if request.landlock else None
        sock = socket.socket(fileno=control)
        roots = _receive_roots(sock, request.roots)
        fusefs.serve(view, request.mountpoint, sock, confine=confine, roots=roots)
    except BaseException as exc:  # the supervisor sees the exit; say why on stderr
        detail = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"capsule view server for {name}: {detail}")
        os._exit(EXIT_BOOTSTRAP)
    os._exit(0)
