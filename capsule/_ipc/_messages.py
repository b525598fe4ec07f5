"""The closed set of messages on a container's channel, as msgspec tagged structs.

Data only: no I/O, and nothing here is ever unpickled; inline feature code travels
only supervisor -> container, as opaque bytes the container unpickles itself.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import msgspec

__all__ = [
    "CHANNEL_FD",
    "NAMESPACES",
    "Call",
    "Cancel",
    "Entry",
    "Failure",
    "FromContainer",
    "FromSupervisor",
    "Hello",
    "Inline",
    "Log",
    "Ready",
    "Reply",
    "SandboxStatus",
    "Start",
    "Stop",
]


CHANNEL_FD: Final = 3
"""The container's end of its channel: with 0-2 (/dev/null), the only descriptors it starts with."""
NAMESPACES: Final = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
"""The namespace kinds a container unshares and reports in its SandboxStatus."""


class _Message(msgspec.Struct, frozen=True, tag_field="t", forbid_unknown_fields=True):
    pass


class SandboxStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a container sees of its own sandbox, measured from inside before any feature code.

    ``namespaces`` maps a namespace kind (``user``, ``mnt``, ...) to the
    ``/proc/self/ns`` link text; the supervisor compares them with its own.
    """

    namespaces: dict[str, str]
    uid_map: str
    uid: int
    no_new_privs: bool
    dumpable: bool
    seccomp: int
    landlock_abi: int
    capabilities: int
    fds: list[int]
    pid: int


# container -> supervisor


class Hello(_Message, tag="hello", frozen=True):
    """First message: the container's own sandbox report (the handshake)."""

    status: SandboxStatus


class Ready(_Message, tag="ready", frozen=True):
    """The feature's code is loaded and its ``on_start`` hooks ran."""

    services: list[str]
    topics: list[str]


class Reply(_Message, tag="reply", frozen=True):
    id: int
    value: Any


class Failure(_Message, tag="failure", frozen=True):
    """A call, or the feature's start, failed; data only (type name and traceback text)."""

    id: int
    type: str
    message: str
    traceback: str


class Log(_Message, tag="log", frozen=True):
    """A line the feature wrote to stdout or stderr."""

    stream: str
    text: str


FromContainer: TypeAlias = Hello | Ready | Reply | Failure | Log


# supervisor -> container


class Entry(msgspec.Struct, frozen=True, tag="entry", tag_field="t"):
    """Import ``module`` from the bundle and use its ``attribute`` (a Feature)."""

    module: str
    attribute: str


class Inline(msgspec.Struct, frozen=True, tag="inline", tag_field="t"):
    """A Feature pickled by the host program (supervisor -> container only)."""

    pickled: bytes


class Start(_Message, tag="start", frozen=True):
    """After the handshake: who the container is, what it holds, what code to run."""

    feature: str
    version: str
    tokens: list[str]
    code: Entry | Inline
    bundle: str


class Call(_Message, tag="call", frozen=True):
    id: int
    service: str
    payload: Any


class Cancel(_Message, tag="cancel", frozen=True):
    id: int


class Stop(_Message, tag="stop", frozen=True):
    """Run the ``on_stop`` hooks and exit; the supervisor kills after its grace period."""

    reason: str


FromSupervisor: TypeAlias = Start | Call | Cancel | Stop
