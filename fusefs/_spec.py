"""View specifications: what one container's file-system view is made of.

Pure data and validation: no FUSE, no I/O, and no import of capsule (capsule builds
these from its grants and hands them over; fusefs never reaches back).
"""

from __future__ import annotations

import enum
import posixpath
from typing import Final, final

import msgspec

__all__ = ["LISTING_BYTES", "MAX_MOUNTS", "MountKind", "MountSpec", "ViewSpec", "ViewSpecError"]

#: mounts in one view at most (the node table numbers them in 16 bits)
MAX_MOUNTS: Final = 1024
#: the default of ``ViewSpec.listing_bytes``
LISTING_BYTES: Final = 16 << 20


class ViewSpecError(ValueError):
    """A view specification is inconsistent; the message names the mount and the rule."""


class MountKind(enum.Enum):
    """How a mount in a view is backed."""

    RO = "ro"  # read-only view of a volume (or a subtree of it)
    RW = "rw"  # read-write on a volume subtree
    PRIVATE = "private"  # storage of this feature alone, kept across restarts and updates
    COW = "cow"  # copy-on-write over a read-only volume: own changes, others see the original


@final
class MountSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One mount: where it appears in the view, what backs it, and its quota."""

    view_path: str
    kind: MountKind
    #: absolute host directory (for COW: the read-only lower directory); only names the
    #: mount when the owner hands the server that directory as a descriptor (serve's roots)
    backing: str
    upper: str | None = None  # COW only: absolute host directory holding this view's changes
    quota_bytes: int | None = None
    quota_inodes: int | None = None
    token: str | None = None  # id of the token that grants this mount (revocation, audit)
    capability: str = ""  # the granting capability's text form (audit)
    expires: float | None = None  # Unix time the grant ends; None: never

    @property
    def grant(self) -> str:
        """What grants this mount, as audit lines name it."""
        return (
            self.capability or f"fs:{'read,write' if self.writable else 'read'}:{self.view_path}/"
        )

    @property
    def writable(self) -> bool:
        return self.kind is not MountKind.RO


@final
class ViewSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole view: the container it belongs to and its mounts."""

    owner: str  # the feature (container) this view belongs to
    mounts: tuple[MountSpec, ...]
    uid: int = 0  # host uid of the container: files appear owned by it, and it may call
    gid: int = 0
    callers: tuple[int, ...] = ()  # further host uids allowed to call (the one building the view)
    info: dict[str, str] = msgspec.field(default_factory=dict)  # files of /capsule/
    cache_timeout: float = 1.0  # seconds the kernel may keep names and attributes
    #: the most memory the listings of the view's open directories may hold at once (the
    #: names, and a fixed cost per entry and per open directory): opening a directory
    #: beyond it fails with ENOMEM until the container closes some
    listing_bytes: int = LISTING_BYTES

    def validate(self) -> ViewSpec:
        """Return self, or raise ViewSpecError naming the first broken rule."""
        seen: set[str] = set()
        if isinstance(self.listing_bytes, bool) or self.listing_bytes <= 0:
            raise ViewSpecError(
                f"view of {self.owner!r}: listing_bytes={self.listing_bytes!r} (bytes, > 0)"
            )
        if len(self.mounts) > MAX_MOUNTS:
            raise ViewSpecError(
                f"view of {self.owner!r}: {len(self.mounts)} mounts, more than {MAX_MOUNTS}"
            )
        for name in self.info:
            if not name or "/" in name or name.startswith(".") or name == "mounts":
                raise ViewSpecError(f"view of {self.owner!r}: /capsule/{name} is not a valid name")
        for mount in self.mounts:
            where = f"view of {self.owner!r}, mount {mount.view_path!r}"
            _check_absolute(mount.view_path, where, "view path")
            _check_absolute(mount.backing, where, "backing directory")
            if mount.view_path == "/" or mount.view_path.startswith("/capsule"):
                raise ViewSpecError(f"{where}: '/' and /capsule/ are reserved")
            if mount.view_path in seen:
                raise ViewSpecError(f"{where}: mounted twice")
            for other in seen:
                if _nested(other, mount.view_path):
                    raise ViewSpecError(f"{where}: overlaps the mount at {other!r}")
            seen.add(mount.view_path)
            if (mount.kind is MountKind.COW) != (mount.upper is not None):
                raise ViewSpecError(f"{where}: an upper directory is needed by cow mounts only")
            if mount.upper is not None:
                _check_absolute(mount.upper, where, "upper directory")
            for name, value in (
                ("quota_bytes", mount.quota_bytes),
                ("quota_inodes", mount.quota_inodes),
            ):
                if value is not None and (value < 0 or not mount.writable):
                    raise ViewSpecError(f"{where}: {name} needs a writable mount and a value >= 0")
        return self


def _check_absolute(path: str, where: str, what: str) -> None:
    canonical = path.rstrip("/") or "/"
    if not path.startswith("/") or posixpath.normpath(path) != canonical or "\x00" in path:
        raise ViewSpecError(f"{where}: {what} {path!r} must be absolute and normalised (no '..')")


def _nested(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)
