"""The control channel between a view's owner and its file-system server: a closed set of
messages, one per SEQPACKET datagram (msgpack).

Data only: no I/O here. The owner is trusted; so is the server. The container the view
belongs to never sees this channel.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec

from fusefs._spec import ViewSpec

__all__ = [
    "MAX_DATAGRAM",
    "Allowed",
    "Denied",
    "FromServer",
    "Mounted",
    "Probe",
    "ProbeReply",
    "Rekey",
    "Rekeyed",
    "Revoke",
    "Revoked",
    "Serve",
    "Shutdown",
    "ToServer",
    "decode_from_server",
    "decode_to_server",
    "encode",
]

MAX_DATAGRAM: Final = 1 << 20


class _Msg(msgspec.Struct, frozen=True, tag_field="t"):
    pass


# -- owner to server ---------------------------------------------------------------------


class Serve(_Msg, tag="serve", frozen=True):
    """The first message: the view to serve and where to mount it."""

    view: ViewSpec
    mountpoint: str


class Revoke(_Msg, tag="revoke", frozen=True):
    """These tokens are revoked: the mounts they grant fail from the next operation on.

    Answered by a :class:`Revoked` of the same ``seq`` once nothing the kernel cached for
    those mounts can serve another operation."""

    tokens: tuple[str, ...]
    reason: str = "revoked"
    seq: int = 0


class Probe(_Msg, tag="probe", frozen=True):
    """Answer with ProbeReply once a request through the kernel has been served."""

    seq: int


class Shutdown(_Msg, tag="shutdown", frozen=True):
    pass


class Rekey(_Msg, tag="rekey", frozen=True):
    """The tokens granting some mounts were renewed: ``tokens`` maps the id a mount is granted
    by now to its successor, ``expires`` each successor to its expiry (Unix time); ``info``
    replaces /capsule/ files (``tokens``, ``expires``). Open files stay open; a mount
    already closed stays closed. Answered with Rekeyed."""

    seq: int
    tokens: dict[str, str]
    expires: dict[str, float]
    info: dict[str, str] = msgspec.field(default_factory=dict)


ToServer: TypeAlias = Serve | Revoke | Probe | Shutdown | Rekey

# -- server to owner ---------------------------------------------------------------------


class Mounted(_Msg, tag="mounted", frozen=True):
    """The view is mounted and served; ``connection`` names /sys/fs/fuse/connections/N.

    ``notice`` says what a limit the server could not raise means (empty when none): the
    owner logs it, where its own logs go."""

    pid: int
    connection: int | None
    mountpoint: str
    notice: str = ""


class Denied(_Msg, tag="denied", frozen=True):
    """An operation was refused by policy (rate-limited; ``suppressed`` counts the rest)."""

    operation: str
    path: str
    mount: str
    capability: str
    reason: str
    token: str | None = None
    uid: int | None = None
    suppressed: int = 0


class Allowed(_Msg, tag="allowed", frozen=True):
    """Operations served since the last report: ``{"mount op": count}``."""

    counts: dict[str, int]


class Revoked(_Msg, tag="revoked", frozen=True):
    """The mounts that the revoked tokens granted are closed and the kernel's caches of them
    dropped (``mounts``: those closed by this message; empty if they were closed already).

    ``seq`` answers a :class:`Revoke` (0: closed by expiry). ``failed`` counts cache entries
    the kernel refused to drop: the owner must then cut the mount's connection off."""

    tokens: tuple[str, ...]
    mounts: tuple[str, ...]
    reason: str
    seq: int = 0
    failed: int = 0


class ProbeReply(_Msg, tag="probe_reply", frozen=True):
    seq: int


class Rekeyed(_Msg, tag="rekeyed", frozen=True):
    """The answer to Rekey ``seq``: the mounts now granted by the successors, and those that
    were closed already (view path -> why: expired, revoked)."""

    seq: int
    mounts: tuple[str, ...]
    closed: dict[str, str]


FromServer: TypeAlias = Mounted | Denied | Allowed | Revoked | ProbeReply | Rekeyed

_encoder = msgspec.msgpack.Encoder()
_to_server = msgspec.msgpack.Decoder(ToServer)
_from_server = msgspec.msgpack.Decoder(FromServer)


def encode(message: ToServer | FromServer) -> bytes:
    return _encoder.encode(message)


def decode_to_server(data: bytes) -> ToServer:
    return _to_server.decode(data)


def decode_from_server(data: bytes) -> FromServer:
    return _from_server.decode(data)
