"""Messages between the supervisor and its zygote (both trusted), one per SEQPACKET datagram.

Data only. File descriptors travel beside a message as SCM_RIGHTS: a Spawn carries
the container's end of its channel, a SpawnView the view server's end of its control
socket, each followed by the socket its child reads its request from, and a Spawned
carries a pidfd of the process started. A Spawn or SpawnView names no feature: the
zygote forks on it and only the child decodes its own SpawnRequest or ViewRequest, so
nothing one feature's request holds (its name, its paths) is ever in the zygote's
memory for a later fork to inherit. Must not grow a per-feature field: the host uid
and gid a container's root maps to (numbers the zygote writes into its uid map) are
the only facts about a container the zygote is told.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec

from capsule._sandbox._view import ViewPlan

__all__ = [
    "MAX_DATAGRAM",
    "ORDER_DATAGRAM",
    "ROOTS_DATAGRAM",
    "ROOTS_PER_DATAGRAM",
    "VIEW_MOUNTED",
    "Exited",
    "FromZygote",
    "Rlimits",
    "RootSources",
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
#: the largest message the zygote reads from the supervisor (they carry no request)
ORDER_DATAGRAM: Final = 256
#: what the supervisor sends a new view server on its control socket, before anything else,
#: beside a batch of its mounts' directory descriptors (SCM_RIGHTS takes 253 at most)
ROOTS_DATAGRAM: Final = b"roots"
ROOTS_PER_DATAGRAM: Final = 200
#: what the supervisor sends a container's outer process on its request socket once the
#: container's view is mounted, before its RootSources: the outer process waits for it
#: before it copies the host's mount namespace (a view mounted later would not be in it)
VIEW_MOUNTED: Final = b"view-mounted"


class Rlimits(msgspec.Struct, frozen=True):
    nofile: int
    fsize: int
    data: int
    nproc: int | None


class SpawnRequest(msgspec.Struct, frozen=True):
    """How to build one container. ``uid``/``gid`` are the host ids its root maps to.

    Sent to the forked child on a socket of its own, never through the zygote (which forks
    every container: what it once held in memory each later fork inherits). Nothing secret
    travels here either (no token, no environment value): those come on the container's
    channel, in its Start message. No host path either: the sources of ``view``'s binds
    are blank (the runtime's mounts lead them); they come in a :class:`RootSources`
    after it, which only the outer process reads, once the feature's process is forked
    (what the outer process held before, the feature's inherits)."""

    name: str
    uid: int
    gid: int
    view: ViewPlan
    rlimits: Rlimits
    cgroup_procs: tuple[str, ...] = ()
    landlock: bool = True
    seccomp: bool = True


class RootSources(msgspec.Struct, frozen=True):
    """Where a container's root is built from, on the host: ``stage``, the directory it is
    mounted on (in the container's own mount namespace), and for each bind of its view,
    in order, its source and its layers."""

    stage: str
    binds: tuple[tuple[str, ...], ...]


class ViewRequest(msgspec.Struct, frozen=True):
    """How to start one container's file-system server: its view (a ``fusefs.ViewSpec``
    as msgpack) and where to mount it; ``landlock`` confines the server to what it serves;
    ``cgroup_procs`` are the files it writes its pid to (its container's group, so what a
    feature makes its server do and hold counts against that feature's limits). ``roots``
    are the mounts (by index) whose directories arrive as descriptors on the control socket,
    in that order, beside ``ROOTS_DATAGRAM``s: the server opens no path for them.
    ``runtime`` pairs each runtime directory as the zygote sees it with its host path (the
    server runs in the host's mount namespace). Sent to the forked server on a socket of
    its own, never through the zygote."""

    name: str
    view: bytes
    mountpoint: str
    landlock: bool = True
    cgroup_procs: tuple[str, ...] = ()
    roots: tuple[int, ...] = ()
    runtime: tuple[tuple[str, str], ...] = ()


class _Msg(msgspec.Struct, frozen=True, tag_field="t"):
    pass


class Spawn(_Msg, tag="spawn", frozen=True):
    """Fork a container; its channel and then its request's socket come beside this.
    ``uid``/``gid``: the host ids to map its root to (the zygote writes the map)."""

    seq: int
    uid: int
    gid: int


class SpawnView(_Msg, tag="spawn_view", frozen=True):
    """Fork a file-system server; its control socket and then its request's come beside."""

    seq: int


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
