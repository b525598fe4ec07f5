"""Starts the zygote inside a root of its own, where the runtime lies only at neutral paths.

Runs in a short-lived interpreter the supervisor executes (``python -I``): it keeps a
descriptor of the host's mount namespace (file-system servers and containers go back to
it), unshares a private mount namespace, mounts a tmpfs holding the runtime's hidden
mounts, ``/dev``'s four devices and ``/proc``, pivots into it, and executes the zygote's
interpreter from there. Nothing of this process survives the exec: the zygote starts from
neutral paths and never learns the host's. Must not import the runtime the zygote loads.
"""

from __future__ import annotations

import os
import sys
from typing import Final

import msgspec

from capsule._environ import minimal
from capsule._sandbox import _syscalls as sc
from capsule._sandbox._view import build_runtime_root, enter_root
from capsule._spawn._layout import RuntimeLayout

__all__ = ["EXIT_NO_ROOT", "ZYGOTE", "main"]

#: the launcher's exit status when the zygote's root could not be built (the reason is on
#: standard error)
EXIT_NO_ROOT: Final = 71

#: the zygote's start, as ``python -I [-S] -c ZYGOTE FD HOST_NS PATH...``
ZYGOTE: Final = (
    "import sys; sys.path[:0] = sys.argv[3:]; "
    "from capsule._spawn._zygote import main; main(sys.argv[:3])"
)


def main(argv: list[str]) -> None:
    """``argv``: the layout (JSON), the directory to mount the root on, the socket's fd."""
    layout = msgspec.json.decode(argv[0], type=RuntimeLayout)
    where, fd = argv[1], argv[2]
    try:
        host = os.open("/proc/self/ns/mnt", os.O_RDONLY)  # inherited by the zygote
        os.set_inheritable(host, True)  # noqa: FBT003 - the os API's own positional flag
        sc.unshare(sc.CLONE_NEWNS)
        build_runtime_root(where, layout.binds, layout.symlinks)
        enter_root()
    except OSError as exc:
        sys.stderr.write(f"capsule: could not give the zygote a root of its own: {exc}\n")
        os._exit(EXIT_NO_ROOT)
    executable = layout.executable
    command = [executable, "-I", "-S", "-c", ZYGOTE, fd, str(host), *layout.path]
    os.execve(executable, command, minimal(layout.library_path))  # noqa: S606 - our own interpreter, fixed argv
