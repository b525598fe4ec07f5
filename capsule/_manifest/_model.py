"""The parsed, frozen form of capsule.toml and app.toml, and of what an app grants.

Plain typed data and the capabilities it stands for: no file reading and no checks
(the readers build only valid values).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, TypeAlias, final

import msgspec

from capsule._tokens._caps import Capability, parse_capability

__all__ = [
    "DEFAULT_BROKER_LIMITS",
    "DEFAULT_LIMITS",
    "DEFAULT_RESTART",
    "DEFAULT_START",
    "DEFAULT_UPDATE_POLICY",
    "DEFAULT_VARIANT_POLICY",
    "P99_FLOOR",
    "Access",
    "AppManifest",
    "BrokerLimits",
    "EnvVar",
    "FeatureGrant",
    "FeatureManifest",
    "FsApproval",
    "FsRequest",
    "Limits",
    "Mode",
    "MountGrant",
    "Policy",
    "RestartPolicy",
    "Route",
    "StartPolicy",
    "Storage",
    "Strategy",
    "UpdatePolicy",
    "VariantPolicy",
]

Mode: TypeAlias = Literal["ro", "rw"]
#: what backs a granted view: a volume as it is, a copy-on-write layer over a volume
#: (the feature's changes are its own), or storage that belongs to the feature alone
Storage: TypeAlias = Literal["volume", "cow", "private"]
Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartMode: TypeAlias = Literal["always", "on-failure", "never"]
LaggedPolicy: TypeAlias = Literal["drop", "close"]

_MiB: Final = 1 << 20


def fs_capability(
    path: str, mode: Mode, quota: int | None = None, inodes: int | None = None
) -> Capability:
    """``/data/words`` + ``ro`` -> ``fs:read:/data/words/`` (``rw`` adds write and the quotas)."""
    actions = "read" if mode == "ro" else "read,write"
    limits = [f"{k}={v}" for k, v in (("bytes", quota), ("inodes", inodes)) if v is not None]
    limit = "?" + "&".join(limits) if limits else ""
    return parse_capability(f"fs:{actions}:{path.rstrip('/')}/{limit}")


@final
class FsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A file-system view a feature asks for: a mount point in its own view, ro or rw."""

    path: str
    mode: Mode = "ro"

    @property
    def capability(self) -> Capability:
        return fs_capability(self.path, self.mode)


@final
class Access(msgspec.Struct, frozen=True, kw_only=True):
    """What a feature asks for in ``[access]`` (deny by default: empty asks for nothing)."""

    call: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    fs: tuple[FsRequest, ...] = ()
    net: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()

    def capabilities(self) -> tuple[Capability, ...]:
        """Each request as the capability it maps to, in the order of the keys above."""
        caps = [parse_capability(f"icc:call:{t}") for t in self.call]
        caps += [parse_capability(f"icc:publish:{t}") for t in self.publish]
        caps += [parse_capability(f"icc:subscribe:{t}") for t in self.subscribe]
        caps += [request.capability for request in self.fs]
        caps += [parse_capability(f"net:connect:{t}") for t in self.net]
        caps += [parse_capability(f"net:listen:{t}") for t in self.listen]
        return tuple(caps)


@final
class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Resource ceilings of one feature's container (bytes, processes, cores, descriptors)."""

    memory: int = 256 * _MiB
    pids: int = 64
    cpu: float = 1.0
    open_files: int = 256
    tmp: int = 16 * _MiB


@final
class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When and how fast a crashed feature is restarted (durations in seconds).

    More than ``max_restarts`` restarts within ``window`` seconds and the feature is
    given up on; the delay before a restart doubles from ``backoff_initial`` up to
    ``backoff_max``.
    """

    policy: RestartMode = "on-failure"
    max_restarts: int = 5
    window: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0


@final
class BrokerLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one feature may make the broker hold, from ``[policy.NAME.limits]`` of app.toml.

    ``subscriptions``: patterns subscribed on one connection (the same pattern twice is
    one); ``delegations``: tokens it has delegated that are still live; ``queue``: bytes
    queued towards its container that it has not read yet; ``lagged``: past ``queue``,
    ``"drop"`` events (the container is told how many) or ``"close"`` its container.
    """

    subscriptions: int = 1024
    delegations: int = 64
    queue: int = 4 * _MiB
    lagged: LaggedPolicy = "drop"


@final
class UpdatePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a running feature is replaced by another version, from ``update`` of its
    ``[policy.NAME]`` table in app.toml (durations in seconds, sizes in bytes).

    After a switch the new version is on ``probation`` seconds; the old one stays frozen
    ``keep`` seconds, so a rollback is a thaw. In-flight calls on the old version get
    ``drain`` seconds to finish; at most ``queue`` new calls are held during the switch;
    exported state is at most ``state_max`` bytes. During probation ``crashes`` crashes, an
    error rate of ``error_rate`` over at least ``min_calls`` calls, or a p99 latency more
    than ``p99_ratio`` times the old version's (and at least :data:`P99_FLOOR` seconds)
    rolls the update back.
    """

    probation: float = 30.0
    keep: float = 600.0
    drain: float = 5.0
    queue: int = 1024
    state_max: int = 16 * _MiB
    crashes: int = 2
    min_calls: int = 20
    error_rate: float = 0.1
    p99_ratio: float = 3.0


@final
class VariantPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a feature runs variants side by side, from ``variants`` of its ``[policy.NAME]``
    table in app.toml: what a call is keyed by (``caller`` or ``payload.FIELD``), whether
    candidates only shadow the control (``shadow``), and whether each variant keeps its own
    private storage (``storage = "own"``) or all share the feature's (``"shared"``). The
    guards are those of ``update`` (crashes, error_rate over min_calls, p99_ratio)."""

    sticky: str = "caller"
    shadow: bool = False
    storage: Literal["own", "shared"] = "own"


@final
class StartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When a feature's container runs, from ``start``, ``idle_stop`` and ``wake_on`` of its
    ``[policy.NAME]`` table in app.toml.

    ``eager`` (the default): from the app's start until it is stopped. ``on-demand``: no
    container until a permitted call, stream or event (a topic matching ``wake_on``) needs
    it, and stopped again after ``idle_stop`` seconds with nothing in flight (None: never).
    """

    on_demand: bool = False
    idle_stop: float | None = 300.0
    wake_on: tuple[str, ...] = ()


#: the p99 latency (seconds) under which a new version never counts as slow, however
#: small the old version's baseline was
P99_FLOOR: Final = 0.005

DEFAULT_LIMITS: Final = Limits()
DEFAULT_BROKER_LIMITS: Final = BrokerLimits()
DEFAULT_RESTART: Final = RestartPolicy()
DEFAULT_UPDATE_POLICY: Final = UpdatePolicy()
DEFAULT_VARIANT_POLICY: Final = VariantPolicy()
DEFAULT_START: Final = StartPolicy()


@final
class FeatureManifest(msgspec.Struct, frozen=True, kw_only=True):
    """A feature bundle's ``capsule.toml``; ``root`` is the bundle directory.

    ``forward_only``: a version that cannot go back (it changes its state in a way an
    older version cannot read); a failed update is stopped instead of rolled back.
    """

    name: str
    version: str
    entry: str
    root: Path
    description: str = ""
    services: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    access: Access = Access()
    limits: Limits = DEFAULT_LIMITS
    restart: RestartPolicy = DEFAULT_RESTART
    forward_only: bool = False

    @property
    def entry_module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def entry_attribute(self) -> str:
        return self.entry.partition(":")[2]


@final
class FsApproval(msgspec.Struct, frozen=True, kw_only=True):
    """A file-system view an app approves, and the volume (``name`` or ``name/sub``) behind it.

    ``storage`` says how it is backed: the volume itself, a copy-on-write layer over it,
    or the feature's private storage (``volume`` is then empty).
    """

    path: str
    volume: str
    mode: Mode = "ro"
    quota: int | None = None
    inodes: int | None = None
    storage: Storage = "volume"

    @property
    def capability(self) -> Capability:
        return fs_capability(self.path, self.mode, self.quota, self.inodes)


@final
class EnvVar(msgspec.Struct, frozen=True, kw_only=True):
    """One environment variable an app sets for a feature: ``name`` = ``value``, or the value
    of the host program's variable ``from_host`` (exactly one of the two is set)."""

    name: str
    value: str | None = None
    from_host: str | None = None

    def __repr__(self) -> str:  # a literal may be a secret: never in a log line
        source = f"from_host={self.from_host!r}" if self.from_host is not None else "value=..."
        return f"EnvVar(name={self.name!r}, {source})"


@final
class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """What an app approves for one feature in ``[policy.NAME]``: the same keys as [access],
    and ``env``, the environment variables it sets for the feature, ``limits``, what it may
    make the broker hold, and ``update``, how a new version of it takes over (the app alone
    decides these three)."""

    call: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    fs: tuple[FsApproval, ...] = ()
    net: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    limits: BrokerLimits = DEFAULT_BROKER_LIMITS
    update: UpdatePolicy = DEFAULT_UPDATE_POLICY
    variants: VariantPolicy = DEFAULT_VARIANT_POLICY
    start: StartPolicy = DEFAULT_START

    def capabilities(self) -> tuple[Capability, ...]:
        """Each approval as the capability it maps to, in the order of ``Access.capabilities``."""
        caps = [parse_capability(f"icc:call:{t}") for t in self.call]
        caps += [parse_capability(f"icc:publish:{t}") for t in self.publish]
        caps += [parse_capability(f"icc:subscribe:{t}") for t in self.subscribe]
        caps += [approval.capability for approval in self.fs]
        caps += [parse_capability(f"net:connect:{t}") for t in self.net]
        caps += [parse_capability(f"net:listen:{t}") for t in self.listen]
        return tuple(caps)


@final
class AppManifest(msgspec.Struct, frozen=True, kw_only=True):
    """An app's ``app.toml``: bundle directories as written, volumes and policies.

    ``allow_missing`` names isolation mechanisms (``cgroups``, ``landlock``,
    ``seccomp``) the app agrees to run without on a machine that lacks them.
    ``token_ttl`` is how long its containers' tokens live before renewal replaces them.
    ``audit_max`` and ``audit_share`` bound its audit log and one feature's part of it.
    ``plugins`` is the ``[plugins]`` table: the most a plugin installed at run time may be
    granted, written like a ``[policy.NAME]`` table (None: no plugin may be installed
    that asks for anything).
    """

    name: str
    features: tuple[str, ...]
    strategy: Strategy = "one_for_one"
    allow_missing: tuple[str, ...] = ()
    token_ttl: float | None = None  # seconds a container's tokens live; None: the default
    audit_max: int | None = None  # bytes the audit log and its rotated files hold; None: 64 MiB
    audit_share: float | None = None  # of each audit file, one feature's part; None: 0.25
    volumes: Mapping[str, str] = msgspec.field(default_factory=dict)
    policies: Mapping[str, Policy] = msgspec.field(default_factory=dict)
    plugins: Policy | None = None

    def update_policy(self, feature: str) -> UpdatePolicy:
        """How app feature ``feature`` is updated: ``update`` of its ``[policy.NAME]``, or the
        default (a plugin's is ``plugins.update``)."""
        policy = self.policies.get(feature)
        return DEFAULT_UPDATE_POLICY if policy is None else policy.update

    def variant_policy(self, feature: str) -> VariantPolicy:
        """How app feature ``feature`` runs variants: ``variants`` of its ``[policy.NAME]``."""
        policy = self.policies.get(feature)
        return DEFAULT_VARIANT_POLICY if policy is None else policy.variants

    def start_policy(self, feature: str) -> StartPolicy:
        """When app feature ``feature`` runs: ``start`` and ``idle_stop`` of its
        ``[policy.NAME]`` (plugins start eagerly)."""
        policy = self.policies.get(feature)
        return DEFAULT_START if policy is None else policy.start


@final
class MountGrant(msgspec.Struct, frozen=True, kw_only=True):
    """One granted file-system view: ``view`` in the feature, backed by ``host`` on the host.

    ``volume`` is the volume name plus any subdirectory (``words/en``); ``quota`` and
    ``inodes`` are the limits of a writable view, or None. ``storage`` is ``volume``
    (``host`` itself), ``cow`` (a copy-on-write layer over ``host``, kept per feature)
    or ``private`` (the feature's own storage; ``host`` is None and ``volume`` empty).
    """

    view: str
    host: Path | None
    mode: Mode
    volume: str
    quota: int | None = None
    inodes: int | None = None
    storage: Storage = "volume"


@final
class FeatureGrant(msgspec.Struct, frozen=True, kw_only=True):
    """The authority a feature receives: its requests that the app approved, and the
    environment variables its policy sets (``env``; nothing else of the host's)."""

    feature: str
    capabilities: tuple[Capability, ...] = ()
    mounts: tuple[MountGrant, ...] = ()
    env: tuple[EnvVar, ...] = ()


@final
class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A granted message path: a call to a service, or an event on a topic."""

    kind: Literal["call", "event"]
    source: str
    target: str
    name: str
