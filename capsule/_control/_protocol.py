"""The control protocol between the ``capsule`` command line and a running app.

Data and framing only: a closed set of msgspec structs in length-prefixed msgpack
frames whose size is checked before a byte of the body is decoded. No sockets, no
policy, and nothing received is ever unpickled or evaluated.

Every request carries the run's admin secret (``token``); the server answers each
request with exactly one response: ``Snapshot`` (to ``Status``), ``Result`` (to
``Call``), ``Done`` (to ``Start``, ``Stop``, ``Restart``, ``PluginAdd`` and
``PluginRemove``), ``Updated`` (to ``Update`` and ``Rollback``), ``Versions`` (to
``History``), ``VariantsReport`` (to ``Variants``), ``PluginReview`` (to a dry-run
``PluginAdd``), ``PluginList`` (to ``Plugins``) or ``Failure``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeAlias

import msgspec

from capsule._supervisor._history import VersionRecord
from capsule._supervisor._records import FeatureStatistics, PluginInfo, UpdateReport
from capsule._supervisor._variant_stats import VariantsStatus
from capsule.errors import ProtocolError

__all__ = [
    "HEADER",
    "MAX_REQUEST",
    "MAX_RESPONSE",
    "Call",
    "Done",
    "Failure",
    "FeatureRow",
    "History",
    "PluginAdd",
    "PluginList",
    "PluginRemove",
    "PluginReview",
    "PluginRow",
    "Plugins",
    "Request",
    "Response",
    "Restart",
    "Result",
    "Rollback",
    "Snapshot",
    "Start",
    "Status",
    "Stop",
    "Update",
    "Updated",
    "Variants",
    "VariantsReport",
    "Versions",
    "decode_request",
    "decode_response",
    "encode",
    "frame_size",
]

HEADER: Final = 4
"""Bytes of the big-endian length that precedes each frame's body."""
MAX_REQUEST: Final = 1 << 20
"""The largest request body a server reads (a call's JSON payload must fit)."""
MAX_RESPONSE: Final = 16 << 20
"""The largest response body a client reads (a call's JSON reply must fit)."""

Secret = Annotated[str, msgspec.Meta(max_length=128)]
Name = Annotated[str, msgspec.Meta(max_length=256)]
JsonText = Annotated[str, msgspec.Meta(max_length=MAX_REQUEST)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)]
Drain = Annotated[float, msgspec.Meta(ge=0, le=3600)]
PathText = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class _Request(msgspec.Struct, frozen=True, tag_field="t", forbid_unknown_fields=True):
    token: Secret


class Status(_Request, frozen=True, tag="status"):
    """Ask for a Snapshot of the app and its features."""


class Call(_Request, frozen=True, tag="call"):
    """Call ``service`` of ``feature`` with host authority; ``payload`` is JSON text."""

    feature: Name
    service: Name
    payload: JsonText = "null"
    timeout: Seconds | None = None


class Start(_Request, frozen=True, tag="start"):
    """Start a stopped feature and wait until it is ready."""

    feature: Name


class Stop(_Request, frozen=True, tag="stop"):
    """Stop a feature; it stays stopped until started or restarted."""

    feature: Name


class Restart(_Request, frozen=True, tag="restart"):
    """Stop and start a feature again (not counted against its restart limit)."""

    feature: Name


class Update(_Request, frozen=True, tag="update"):
    """Update a feature live to the bundle at ``bundle`` (an absolute path, read by the
    app's process); ``dry_run`` only says what would happen."""

    feature: Name
    bundle: PathText
    approve: bool = False
    dry_run: bool = False


class PluginAdd(_Request, frozen=True, tag="plugin-add"):
    """Install the bundle at ``bundle`` (an absolute path) as a plugin; ``dry_run`` only
    reviews it (answered with PluginReview)."""

    bundle: PathText
    approve: bool = False
    dry_run: bool = False


class Rollback(_Request, frozen=True, tag="rollback"):
    """Go back to the version a feature ran before its last update."""

    feature: Name


class History(_Request, frozen=True, tag="history"):
    """The versions a feature ran, oldest first."""

    feature: Name


class PluginRemove(_Request, frozen=True, tag="plugin-remove"):
    """Uninstall the plugin ``feature``, letting calls in flight finish within ``drain`` s."""

    feature: Name
    drain: Drain = 5.0
    purge: bool = False


Share = Annotated[float, msgspec.Meta(ge=0, le=100)]


class Variants(_Request, frozen=True, tag="variants"):
    """Variants of a feature: ``set`` the split (``shares``: version or absolute bundle path
    -> percent), ask their ``status``, ``promote`` one ``version`` or ``abort`` them."""

    action: Literal["set", "status", "promote", "abort"]
    feature: Name
    shares: Annotated[dict[PathText, Share], msgspec.Meta(max_length=8)] = {}
    sticky: Name | None = None
    shadow: bool | None = None
    approve: bool = False
    version: Name | None = None


class Plugins(_Request, frozen=True, tag="plugins"):
    """Ask for the installed plugins (a PluginList)."""


Request: TypeAlias = (
    Status
    | Call
    | Start
    | Stop
    | Restart
    | Update
    | Rollback
    | History
    | PluginAdd
    | PluginRemove
    | Plugins
    | Variants
)


#: one feature's statistics on the wire: ``capsule.FeatureStatistics`` itself (a frozen
#: dataclass msgspec encodes and decodes field by field), so the two never drift apart
FeatureRow: TypeAlias = FeatureStatistics
#: one installed plugin on the wire: ``capsule.PluginInfo`` itself
PluginRow: TypeAlias = PluginInfo


class _Response(msgspec.Struct, frozen=True, tag_field="t"):
    pass


class Snapshot(_Response, frozen=True, tag="snapshot"):
    """The app as its supervisor sees it; ``clock`` is a monotonic time for rates."""

    app: str
    run: str
    pid: int
    started: float
    uptime: float
    clock: float
    isolation: str
    cgroups: str
    audit_path: str | None
    containers_started: int
    restarts: int
    quarantined: list[str]
    calls_routed: int
    events_published: int
    allowed: int
    denied: int
    features: list[FeatureRow]
    variants: list[VariantsStatus] = []  # the experiments under way


class Result(_Response, frozen=True, tag="result"):
    """A call's reply, as JSON text."""

    json: str


class Done(_Response, frozen=True, tag="done"):
    """A start, stop or restart finished; ``state`` is the feature's state now."""

    feature: str
    state: str


class Updated(_Response, frozen=True, tag="updated"):
    """What an update or rollback did (or, for a dry run, would do)."""

    report: UpdateReport


class VariantsReport(_Response, frozen=True, tag="variants-report"):
    """The variants of a feature (None: it runs none), and the update a promotion made."""

    status: VariantsStatus | None
    report: UpdateReport | None = None


class Versions(_Response, frozen=True, tag="versions"):
    """A feature's version history, oldest first."""

    feature: str
    records: list[VersionRecord]


class Failure(_Response, frozen=True, tag="failure"):
    """The request failed: ``kind`` names the error (``FeatureUnavailableError``,
    ``RemoteError``, ``refused`` for a wrong admin secret, ...)."""

    kind: str
    message: str


class PluginReview(_Response, frozen=True, tag="plugin-review"):
    """What installing a bundle would grant: its ``feature`` and ``version``, the capability
    ``diff`` (``+ ...`` lines) and whether it ``widens`` what the app grants (needs approval)."""

    feature: str
    version: str
    diff: str
    widens: bool


class PluginList(_Response, frozen=True, tag="plugin-list"):
    """The installed plugins."""

    plugins: list[PluginRow]


Response: TypeAlias = (
    Snapshot
    | Result
    | Done
    | Updated
    | Versions
    | Failure
    | PluginReview
    | PluginList
    | VariantsReport
)

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_responses = msgspec.msgpack.Decoder(Response)


def encode(message: _Request | _Response, *, limit: int) -> bytes:
    """One frame: the body's length, then the body; ProtocolError past ``limit`` bytes."""
    body = _encoder.encode(message)
    if len(body) > limit:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {limit}-byte limit")
    return len(body).to_bytes(HEADER, "big") + body


def frame_size(header: bytes, *, limit: int) -> int:
    """The body size a frame header announces; ProtocolError past ``limit``."""
    size = int.from_bytes(header, "big")
    if size > limit:
        raise ProtocolError(f"frame of {size} bytes exceeds the {limit}-byte limit")
    return size


def decode_request(body: bytes) -> Request:
    """A request; ProtocolError for anything outside the closed set."""
    try:
        return _requests.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a control request: {exc}") from None


def decode_response(body: bytes) -> Response:
    """A response; ProtocolError for anything outside the closed set."""
    try:
        return _responses.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a control response: {exc}") from None
