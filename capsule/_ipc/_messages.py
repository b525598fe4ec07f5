"""The closed set of messages on a container's channel, as msgspec tagged structs.

Data only: no I/O, and nothing here is ever unpickled; inline feature code travels
only supervisor -> container, as opaque bytes the container unpickles itself.

Payloads (call arguments, replies, events, stream items) are ``msgspec.Raw``: the
broker forwards them without building a Python object, and only the receiver decodes
them. Every string and list has a length bound, so a frame that decodes is small in
every dimension; nesting is bounded by the schema, and a payload's own nesting by the
decoder's recursion guard.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias

import msgspec

__all__ = [
    "CHANNEL_FD",
    "ERROR_KINDS",
    "HOST",
    "NAMESPACES",
    "Admit",
    "Admitted",
    "Call",
    "Cancel",
    "Connect",
    "Delegate",
    "End",
    "Entry",
    "Error",
    "Event",
    "ExportState",
    "Failure",
    "FromContainer",
    "FromSupervisor",
    "Granted",
    "Hello",
    "ImportState",
    "Inline",
    "Item",
    "Lagged",
    "Listen",
    "Log",
    "More",
    "Opened",
    "Publish",
    "Ready",
    "Renewed",
    "Reply",
    "Request",
    "Result",
    "Revoke",
    "SandboxStatus",
    "Start",
    "StateDone",
    "Stop",
    "Subscribe",
]


CHANNEL_FD: Final = 3
"""The container's end of its channel: with 0-2 (/dev/null), the only descriptors it starts with."""
NAMESPACES: Final = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
"""The namespace kinds a container unshares and reports in its SandboxStatus."""


class _Message(msgspec.Struct, frozen=True, tag_field="t", array_like=True):
    pass


Id = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Name = Annotated[str, msgspec.Meta(max_length=256)]
"""A feature, service or topic name (checked for shape by the broker, not here)."""
Text = Annotated[str, msgspec.Meta(max_length=65536)]
TokenText = Annotated[str, msgspec.Meta(max_length=8192)]
Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=366 * 24 * 3600)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


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

    services: Annotated[list[Name], msgspec.Meta(max_length=1024)]
    topics: Annotated[list[Name], msgspec.Meta(max_length=1024)]


class Reply(_Message, tag="reply", frozen=True):
    """The answer to a Call the broker delivered."""

    id: Id
    value: msgspec.Raw


class Failure(_Message, tag="failure", frozen=True):
    """A call, or the feature's start, failed; data only (type name and traceback text)."""

    id: Id
    type: Name
    message: Text
    traceback: Text


class Log(_Message, tag="log", frozen=True):
    """A line the feature wrote to stdout or stderr."""

    stream: Annotated[str, msgspec.Meta(max_length=8)]
    text: Text


class Admit(_Message, tag="admit", frozen=True):
    """Present a token once; the broker answers Admitted (a handle) or Error."""

    id: Id
    token: TokenText


class Request(_Message, tag="request", frozen=True):
    """Call ``feature.service`` under the grant behind ``handle``.

    ``stream`` asks for a stream of Items with ``window`` credits granted up front.
    """

    id: Id
    handle: Id
    feature: Name
    service: Name
    payload: msgspec.Raw
    timeout: Seconds | None = None
    stream: bool = False
    window: Count = 0


class Publish(_Message, tag="publish", frozen=True):
    """Publish an event on ``topic`` under the grant behind ``handle`` (one way)."""

    handle: Id
    topic: Name
    payload: msgspec.Raw


class Subscribe(_Message, tag="subscribe", frozen=True):
    """Receive Events on topics matching ``pattern`` (``spell.checked``, ``spell.*``)."""

    id: Id
    handle: Id
    pattern: Name


class Delegate(_Message, tag="delegate", frozen=True):
    """Derive a narrower token from the one behind ``handle`` and hand it to feature ``to``."""

    id: Id
    handle: Id
    to: Name
    capabilities: Annotated[list[Name], msgspec.Meta(max_length=32)]
    ttl: Seconds | None = None


class Revoke(_Message, tag="revoke", frozen=True):
    """Revoke a token this feature delegated (and everything derived from it)."""

    id: Id
    token_id: Annotated[str, msgspec.Meta(max_length=32)]


class Connect(_Message, tag="connect", frozen=True):
    """Open a TCP connection to ``host``:``port`` under the ``net:connect`` grant behind
    ``handle``; answered with Opened (and the socket) or Error. ``host`` is checked as sent:
    the broker, not the container, normalises it."""

    id: Id
    handle: Id
    host: Name
    port: Port
    timeout: Seconds | None = None


class Listen(_Message, tag="listen", frozen=True):
    """Open a TCP listening socket on ``host``:``port`` under the ``net:listen`` grant behind
    ``handle``; answered with Opened (and the socket) or Error."""

    id: Id
    handle: Id
    host: Name
    port: Port
    backlog: Count = 0


# both directions


class Item(_Message, tag="item", frozen=True):
    """One value of a stream; the sender spends one credit."""

    id: Id
    value: msgspec.Raw


class End(_Message, tag="end", frozen=True):
    """The stream ``id`` is finished."""

    id: Id


class More(_Message, tag="more", frozen=True):
    """``n`` more credits for the stream ``id`` (the receiver's backpressure)."""

    id: Id
    n: Count


class Cancel(_Message, tag="cancel", frozen=True):
    """Cancel the call (supervisor -> container) or the request (container -> supervisor) ``id``."""

    id: Id


class StateDone(_Message, tag="state-done", frozen=True):
    """The end of an ExportState or ImportState: ``hooked`` says whether the feature has the
    hook at all, ``error`` why it failed (empty when it did not)."""

    id: Id
    hooked: bool
    error: Text = ""


FromContainer: TypeAlias = (
    Hello
    | Ready
    | Reply
    | Failure
    | Log
    | Admit
    | Request
    | Publish
    | Subscribe
    | Delegate
    | Revoke
    | Connect
    | Listen
    | Item
    | End
    | More
    | Cancel
    | StateDone
)


# supervisor -> container


class Entry(msgspec.Struct, frozen=True, tag="entry", tag_field="t"):
    """Import ``module`` from the bundle and use its ``attribute`` (a Feature)."""

    module: str
    attribute: str


class Inline(msgspec.Struct, frozen=True, tag="inline", tag_field="t"):
    """A Feature pickled by the host program (supervisor -> container only)."""

    pickled: bytes


class Start(_Message, tag="start", frozen=True):
    """After the handshake: who the container is, what it holds, what code to run, and its
    whole environment (``capsule._environ.container_environment``), sent on the container's
    own channel like its tokens, never through the zygote."""

    feature: str
    version: str
    tokens: list[str]
    code: Entry | Inline
    bundle: str
    env: list[tuple[str, str]]


class Call(_Message, tag="call", frozen=True):
    """Run ``service``; ``caller`` is the verified sender (a feature name, or HOST)."""

    id: Id
    service: Name
    payload: msgspec.Raw
    caller: Name
    stream: bool = False
    window: Count = 0


class Stop(_Message, tag="stop", frozen=True):
    """Run the ``on_stop`` hooks and exit; the supervisor kills after its grace period."""

    reason: str


class Admitted(_Message, tag="admitted", frozen=True):
    """A token was admitted on this connection: use ``handle`` to act under it."""

    id: Id
    handle: Id
    token_id: str
    capabilities: list[str]
    expires: float


class Result(_Message, tag="result", frozen=True):
    """The answer to a Request, Subscribe, Delegate or Revoke."""

    id: Id
    value: msgspec.Raw


class Error(_Message, tag="error", frozen=True):
    """A Request (or Admit, Subscribe, Delegate, Revoke, Connect, Listen) failed; ``kind`` is
    one of ERROR_KINDS. ``errno`` is set for kind ``network``: an errno value, or a negative
    getaddrinfo (EAI_*) code."""

    id: Id
    kind: str
    feature: str
    message: str
    type: str = ""
    traceback: str = ""
    capability: str = ""
    exit_code: int | None = None
    signal: int | None = None
    errno: int | None = None
    version: str = ""  # kind ``shadow``: the shadow variant's version


class Opened(_Message, tag="opened", frozen=True):
    """The answer to a Connect or Listen: the frame carries the socket, one descriptor passed
    with SCM_RIGHTS on its first byte. The only frame that carries a descriptor, and only
    ever supervisor -> container."""

    id: Id
    address: str
    port: int


class Event(_Message, tag="event", frozen=True):
    """An event on ``topic`` from ``sender`` (a feature name, or HOST)."""

    topic: str
    payload: msgspec.Raw
    sender: str


class Granted(_Message, tag="granted", frozen=True):
    """Feature ``sender`` delegated a token to this container; present it with Admit to use it."""

    token: str
    sender: str


class Renewed(_Message, tag="renewed", frozen=True):
    """The token admitted under ``handle`` was renewed: the same handle and capabilities,
    now under token ``token_id`` until ``expires`` (Unix time)."""

    handle: Id
    token_id: str
    expires: float


class Lagged(_Message, tag="lagged", frozen=True):
    """The broker dropped ``dropped`` events for this container since it last said so: more
    than its queue limit of bytes was waiting for it to read."""

    dropped: int


class ExportState(_Message, tag="export-state", frozen=True):
    """Run the feature's ``export_state`` hook and write what it returns into the memory file
    passed with this frame (SCM_RIGHTS), then answer StateDone; or refuse (StateDone with an
    error) when that is over ``limit`` bytes. The supervisor seals the file after StateDone."""

    id: Id
    limit: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)]


class ImportState(_Message, tag="import-state", frozen=True):
    """Run the feature's ``import_state`` hook on what the sealed memory file passed with this
    frame holds (the running version's export); StateDone answers."""

    id: Id
    from_version: Name


FromSupervisor: TypeAlias = (
    Start
    | Call
    | Cancel
    | Stop
    | Admitted
    | Result
    | Error
    | Opened
    | Event
    | Granted
    | Renewed
    | Lagged
    | Item
    | End
    | More
    | ExportState
    | ImportState
)

HOST: Final = "@host"
"""The caller or sender name of the host program (never a feature name)."""

ERROR_KINDS: Final = (
    "denied",  # no capability covers it: CapabilityDeniedError
    "token",  # a token was refused at admission: InvalidTokenError
    "remote",  # the handler raised: RemoteError
    "crashed",  # the callee's container ended during the call: FeatureCrashedError
    "unavailable",  # stopped or quarantined: FeatureUnavailableError
    "timeout",  # past the deadline: FeatureTimeoutError
    "start",  # an on-demand feature woken for it did not start: FeatureStartError
    "overloaded",  # the sender is over its quota: OverloadedError
    "invalid",  # no such feature or service, or a malformed request: FeatureError
    "network",  # a granted connect or listen failed (errno set): the OSError for errno
    "shadow",  # a shadow variant's own call, delegation or connection: ShadowError
)
