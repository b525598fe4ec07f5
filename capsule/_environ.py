"""The environment of the zygote and of everything it starts: built from scratch, never inherited.

What is kept is decided here and only here. It must not copy the host program's
environment wholesale: a host variable reaches a feature only when the app names it
(``env = { NAME = { from_host = "HOST_NAME" } }`` in its ``[policy.NAME]``).

The zygote is executed with :func:`minimal` and nothing else, so its initial environment
block, which every container and file-system server it forks inherits (and which
``/proc/PID/environ`` shows), holds no host variable. It needs no ``PYTHON*`` variable:
it runs ``python -I``, which ignores them, and the interpreter finds its prefix from its
own path. ``LC_CTYPE`` is set because Python, started in the C locale, would otherwise
set it itself (PEP 538); ``PATH`` is fixed so that ``shutil.which`` and subprocesses find
the usual tools. A zygote started in a root of its own (see ``_spawn._launcher``) also
has ``LD_LIBRARY_PATH``, naming where its interpreter's library lies there. Each container
then replaces its environment with :func:`container_environment`: the minimal one plus
what its app approves. That arrives in the container's Start message, on its own channel
like its tokens, never through the zygote: every later container is a fork of the
zygote's memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from capsule.errors import InternalError

__all__ = [
    "MAX_ENTRY",
    "MAX_TOTAL",
    "MINIMAL",
    "NAME",
    "RESERVED",
    "RESERVED_PREFIX",
    "check_name",
    "container_environment",
    "entry_size",
    "minimal",
]

#: what every process the zygote starts finds in its environment, and nothing more.
MINIMAL: Final[Mapping[str, str]] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LC_CTYPE": "C.UTF-8",
}
#: names an app may not set: the runtime sets them (``LC_ALL`` would override ``LC_CTYPE``).
RESERVED: Final = frozenset({*MINIMAL, "LC_ALL"})
#: a prefix kept for the runtime's own variables.
RESERVED_PREFIX: Final = "CAPSULE_"
#: a portable environment variable name (POSIX: letters, digits and ``_``, not first a digit).
NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_NAME: Final = 255
#: the most bytes of one ``NAME=value`` (with its NUL): Linux's limit for one exec string.
MAX_ENTRY: Final = 128 * 1024
#: the most bytes of a container's whole environment (it travels in its Start message).
MAX_TOTAL: Final = 512 * 1024


def minimal(library_path: Sequence[str] = ()) -> dict[str, str]:
    """The zygote's whole environment (a fresh copy); ``library_path`` becomes its
    ``LD_LIBRARY_PATH`` when it runs in a root of its own (neutral paths only)."""
    environment = dict(MINIMAL)
    if library_path:
        environment["LD_LIBRARY_PATH"] = ":".join(library_path)
    return environment


def check_name(name: str) -> str | None:
    """What is wrong with ``name`` as a variable an app sets for a feature, or None."""
    if len(name) > _MAX_NAME or NAME.fullmatch(name) is None:
        shown = name if len(name) <= 60 else name[:57] + "..."
        return (
            f'"{shown}" is not a valid environment variable name: use letters, digits and "_", '
            f'not starting with a digit, at most {_MAX_NAME} characters, e.g. "LOG_LEVEL"'
        )
    if name in RESERVED:
        return f'"{name}" is set by capsule itself and cannot be changed; reserved: ' + ", ".join(
            sorted(RESERVED)
        )
    if name.startswith(RESERVED_PREFIX):
        return f'"{name}": names starting with {RESERVED_PREFIX} are reserved for capsule'
    return None


def container_environment(approved: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A container's whole environment: :data:`MINIMAL` plus the app's approved values.

    ``approved`` has been checked (names by :func:`check_name`, values without NUL); a
    reserved name here is a bug in capsule, never the app's choice.
    """
    clash = sorted(name for name in approved if name in RESERVED or "\0" in approved[name])
    if clash:
        raise InternalError(f"environment entries that the manifest check refuses: {clash}")
    return tuple({**MINIMAL, **approved}.items())


def entry_size(name: str, value: str) -> int:
    """The bytes ``NAME=value`` takes in an environment block, with its NUL."""
    return len(name.encode()) + len(value.encode("utf-8", "surrogateescape")) + 2
