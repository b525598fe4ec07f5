"""Messages between the supervisor and its zygote (both trusted), one per SEQPACKET datagram.

Data only. File descriptors travel beside a message as SCM_RIGHTS: a Spawn carries
the container's end of its channel, a SpawnView the view server's end of its control
socket, and a Spawned carries a pidfd of the process started.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec

from capsule._sandbox._view import ViewPlan

__all__ = [
    "MAX_DATAGRAM",
    "ROOTS_DATAGRAM",
    "ROOTS_PER_DATAGRAM",
    "Exited",
    "FromZygote",
    "Rlimits",
    "Spawn",
    "SpawnFailed",
    "SpawnRequest",
    "SpawnView",
    "Spawned",
    "ToZygote",
    "ViewRequest",
    "ZygoteReady",
]

MAX_DATAGRAM: Final = 1 << 20
#: what the supervisor sends a new view server on its control socket, before anything else,
#: beside a batch of its mounts' directory descriptors (SCM_RIGHTS takes 253 at most)
ROOTS_DATAGRAM: Final = b"roots"
ROOTS_PER_DATAGRAM: Final = 200


class Rlimits(msgspec.Struct, frozen=True):
    nofile: int
    fsize: int
    data: int
    nproc: int | None


class SpawnRequest(msgspec.Struct, frozen=True):
    """How to build one container. ``uid``/``gid`` are the host ids its root maps to.

    Nothing secret travels here (no token, no environment value): the zygote forks every
    container, and what it once held in memory each later fork inherits."""

    name: str
    uid: int
    gid: int
    view: ViewPlan
    rlimits: Rlimits
    cgroup_procs: tuple[str, ...] = ()
    landlock: bool = True
    seccomp: bool = True


class ViewRequest(msgspec.Struct, frozen=True):
    """How to start one container's file-system server: its view (a ``fusefs.ViewSpec``
    as msgpack) and where to mount it; ``landlock`` confines the server to what it serves;
    ``cgroup_procs`` are the files it writes its pid to (its container's cpu group, so the
    work a feature makes its server do counts against that feature's cpu limit). ``roots``
    are the mounts (by index) whose directories arrive as descriptors on the control socket,
    in that order, beside ``ROOTS_DATAGRAM``s: the server opens no path for them."""

    name: str
    view: bytes
    mountpoint: str
    landlock: bool = True
    cgroup_procs: tuple[str, ...] = ()
    roots: tuple[int, ...] = ()


class _Msg(msgspec.Struct, frozen=True, tag_field="t"):
    pass


class Spawn(_Msg, tag="spawn", frozen=True):
    seq: int
    request: SpawnRequest


class SpawnView(_Msg, tag="spawn_view", frozen=True):
    seq: int
    request: ViewRequest


ToZygote: TypeAlias = Spawn | SpawnView


class ZygoteReady(_Msg, tag="ready", frozen=True):
    """The zygote is up and has loaded what containers need."""

    pid: int


class Spawned(_Msg, tag="spawned", frozen=True):
    seq: int
    pid: int


class SpawnFailed(_Msg, tag="spawn_failed", frozen=True):
    seq: int
    error: str


class Exited(_Msg, tag="exited", frozen=True):
    """A container (its outer process) ended; ``status`` is the raw wait status."""

    pid: int
    status: int


FromZygote: TypeAlias = ZygoteReady | Spawned | SpawnFailed | Exited
