"""What a new container of a feature is made of: its tokens, its file-system view, and
the request that spawns it.

Builds descriptions only: it starts, mounts and signs nothing itself (the authority
it is handed mints; the supervisor launches what it describes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, final

import cloudpickle

from capsule._broker._routes import ShadowMark
from capsule._container._feature import Feature
from capsule._ipc._messages import Entry, Inline, Start
from capsule._manifest import App, FeatureGrant, FeatureManifest, MountGrant
from capsule._sandbox import _isolation
from capsule._sandbox._cgroups import ContainerCgroup
from capsule._sandbox._view import Bind, ViewPlan
from capsule._spawn._protocol import Rlimits, SpawnRequest
from capsule._supervisor._grantdirs import GrantDirs
from capsule._supervisor._handshake import Expectation
from capsule._supervisor._instance import LaunchSpec
from capsule._tokens._authority import Token, TokenAuthority
from capsule._tokens._format import MAX_CAPABILITIES
from fusefs import LISTING_BYTES, MountKind, MountSpec, ViewSpec

__all__ = [
    "Planner",
    "Version",
    "container_uids",
    "default_state_dir",
    "listing_budget",
    "token_files",
]

_UID_BASE: Final = 2_000_000_000
_MiB: Final = 1 << 20


@final
@dataclass(frozen=True, slots=True)
class Version:
    """One version of a feature, as a container of it is started: its manifest and the
    authority the app grants that manifest."""

    manifest: FeatureManifest
    grant: FeatureGrant
    storage: str | None = None  # its private storage's directory name; None: the feature's
    shadow: ShadowMark | None = None  # set for a shadow variant: it acts on nothing outside it

    @property
    def name(self) -> str:
        return self.manifest.name


@final
class Planner:
    """Describes new containers of one app: features' tokens, views and spawn requests."""

    def __init__(
        self,
        app: App,
        state_dir: Path,
        *,
        inline: Mapping[str, Feature],
        start_timeout: float,
        environments: Mapping[str, tuple[tuple[str, str], ...]],
    ) -> None:
        self.app = app
        self.state_dir = state_dir
        #: inline Feature objects by the bundle directory they stand in for
        self.inline = {app.features[name].root: feature for name, feature in inline.items()}
        self.start_timeout = start_timeout
        self.environments = dict(environments)  # each feature's whole environment, for its Start
        self.dirs = GrantDirs(app)  # opened by the supervisor before any container runs

    def add(
        self, feature: str, grant: FeatureGrant, environment: tuple[tuple[str, str], ...]
    ) -> None:
        """Learn of a feature added while the app runs (a plugin): its grant, environment and
        the directories behind its volume grants (opened now, before its container runs)."""
        self.environments[feature] = environment
        self.dirs.add(feature, grant)

    def remove(self, feature: str) -> None:
        """Forget a feature :meth:`add` added, and close what only it held."""
        self.environments.pop(feature, None)
        self.dirs.release(feature)

    def tokens(self, authority: TokenAuthority, grant: FeatureGrant, ttl: float) -> list[Token]:
        """Fresh tokens for a new container of a feature: its ``grant``, a few capabilities
        each (a version being updated to has its own grant, from its own manifest)."""
        caps = list(grant.capabilities)
        return [
            authority.mint(grant.feature, caps[i : i + MAX_CAPABILITIES], ttl=ttl)
            for i in range(0, len(caps), MAX_CAPABILITIES)
        ]

    def view(
        self, version: Version, tokens: list[Token], uid: int, gid: int
    ) -> tuple[ViewSpec, dict[int, int]]:
        """The file-system view of a new container: one mount per granted fs capability,
        each tied to the token that carries it (revocation and expiry close that mount);
        and the held directory behind each volume mount, by mount index (the server is
        handed those, never a path). FeatureStartError if a grant's path no longer leads
        to the directory it led to when the app opened."""
        carriers = {  # view path -> the fs capability granting it, and the token carrying it
            cap.target.rstrip("/"): (str(cap), token)
            for token in tokens
            for cap in token.claims.caps
            if cap.kind == "fs"
        }
        mounts = []
        roots: dict[int, int] = {}
        manifest, name = version.manifest, version.name
        for index, mount in enumerate(version.grant.mounts):
            text, token = carriers[mount.view]
            kind, backing, upper = self.backing(version.storage or name, mount)
            if kind is not MountKind.PRIVATE:
                roots[index] = self.dirs.directory(name, mount)
            mounts.append(
                MountSpec(
                    view_path=mount.view,
                    kind=kind,
                    backing=backing,
                    upper=upper,
                    quota_bytes=mount.quota,
                    quota_inodes=mount.inodes,
                    token=token.token_id,
                    capability=text,
                    expires=token.claims.exp,
                )
            )
        info = {
            "feature": f"{name}\n",
            "version": f"{manifest.version}\n",
            "capabilities": "".join(f"{cap}\n" for t in tokens for cap in t.claims.caps),
            **token_files(tokens),
        }
        spec = ViewSpec(
            owner=name,
            mounts=tuple(mounts),
            uid=uid,
            gid=gid,
            info=info,
            listing_bytes=listing_budget(manifest.limits.memory),
        )
        return spec.validate(), roots

    def backing(self, feature: str, grant: MountGrant) -> tuple[MountKind, str, str | None]:
        """How a granted mount is backed: kind, backing directory and (cow) upper directory."""
        inside = grant.view.strip("/")
        if grant.storage == "private":
            return MountKind.PRIVATE, str(self.state_dir / "private" / feature / inside), None
        assert grant.host is not None  # noqa: S101 - only private storage has no host directory
        if grant.storage == "cow":
            upper = str(self.state_dir / "cow" / feature / inside)
            return MountKind.COW, str(grant.host), upper
        return (MountKind.RW if grant.mode == "rw" else MountKind.RO), str(grant.host), None

    def spec(
        self,
        version: Version,
        isolation: _isolation.Isolation,
        uid: int,
        gid: int,
        cgroup: ContainerCgroup | None,
        *,
        tokens: list[Token],
        mountpoint: Path,
    ) -> LaunchSpec:
        """How to start a container of ``version``, whose view is (to be) mounted on
        ``mountpoint``."""
        manifest, grant, name = version.manifest, version.grant, version.name
        limits = manifest.limits
        served = str(mountpoint)
        binds = [
            Bind(str(manifest.root), "/bundle", hidden=True),
            Bind(f"{served}/capsule", "/capsule"),
        ]
        binds += [Bind(f"{served}{m.view}", m.view, writable=True) for m in grant.mounts]
        quota = max((m.quota or 0 for m in grant.mounts), default=0)
        request = SpawnRequest(
            name=name,
            uid=uid,
            gid=gid,
            view=ViewPlan(binds=tuple(binds), tmp_size=limits.tmp),
            rlimits=Rlimits(
                nofile=limits.open_files,
                fsize=max(limits.tmp, quota, 64 * _MiB),
                data=2 * limits.memory + 256 * _MiB,
                nproc=limits.pids if os.geteuid() == 0 else None,
            ),
            cgroup_procs=() if cgroup is None else cgroup.procs_files,
            landlock=isolation.get("landlock").available,
            seccomp=isolation.get("seccomp").available,
        )
        inline = self.inline.get(manifest.root)
        code = (
            Inline(pickled=_pickle_feature(inline))
            if inline is not None
            else Entry(module=manifest.entry_module, attribute=manifest.entry_attribute)
        )
        start = Start(
            feature=name,
            version=manifest.version,
            tokens=[token.text for token in tokens],
            code=code,
            bundle="/bundle",
            env=list(self.environments.get(name, ())),
        )
        expectation = Expectation(
            host_uid=uid,
            seccomp=request.seccomp,
            landlock_abi=isolation.landlock_abi if request.landlock else 0,
        )
        return LaunchSpec(name, manifest.version, request, expectation, start, self.start_timeout)


def listing_budget(memory: int) -> int:
    """What the listings of a view's open directories may hold at once: a quarter of the
    feature's memory limit (its view server is charged to that limit), at most
    ``fusefs.LISTING_BYTES`` and at least 1 MiB. Past it, ``opendir`` fails with ENOMEM."""
    return max(_MiB, min(LISTING_BYTES, memory // 4))


def default_state_dir(app: str) -> Path:
    """``$XDG_STATE_HOME/capsule/state/<app>`` (default ``~/.local/state``): private storage
    and copy-on-write changes of the app's features."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "capsule" / "state" / app


def token_files(tokens: list[Token]) -> dict[str, str]:
    """The /capsule/ files that name a container's tokens: ``tokens`` (id and expiry, one a
    line) and ``expires`` (the earliest expiry, ISO 8601)."""
    expires = min((t.claims.exp for t in tokens), default=None)
    return {
        "tokens": "".join(f"{t.token_id} {t.claims.exp:.0f}\n" for t in tokens),
        "expires": "never\n" if expires is None else f"{_iso(expires)}\n",
    }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def container_uids(supervisor_pid: int) -> range:
    """The host uids a root supervisor maps its containers' root to: 256 of its own."""
    first = _UID_BASE + ((supervisor_pid & 0xFFFF) << 8)
    return range(first, first + 256)


def _pickle_feature(feature: Feature) -> bytes:
    """cloudpickle a Feature, by value for every module the container cannot import.

    Handlers defined in a test module or the host program travel as code; capsule's
    own (the fault services) travel by reference.
    """
    handlers = [
        *feature.services.values(),
        *(f for listeners in feature.listeners.values() for f in listeners),
        *feature.start_hooks,
        *feature.stop_hooks,
        *filter(None, (feature.state_export, feature.state_import)),
    ]
    modules = {
        sys.modules[name]
        for name in {getattr(h, "__module__", "") for h in handlers}
        if name in sys.modules and name != "__main__" and name.partition(".")[0] != "capsule"
    }
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        pickled: bytes = cloudpickle.dumps(feature)
        return pickled
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
