"""The directories behind an app's volume grants: opened once when the app opens, held, and
checked again before every mount.

Each volume is opened once, by the real path the app was loaded with, before any container
runs; each granted subdirectory is opened once beneath its volume's descriptor with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)``. Those descriptors are
what every view server of the app is handed, never a path. Before each mount (a start, a
restart) the grant's path is resolved again the same way and must still lead to the very
directory held (device and inode; held open, so its inode number cannot be reused): a grant
whose directory was moved, or replaced by a link or by another directory, refuses to mount.
Mounts nothing and decides no policy; it opens nothing a feature can redirect except beneath
a held descriptor, and never follows a symbolic link.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterable
from typing import Final, final

from capsule._manifest import App, FeatureGrant, MountGrant
from capsule._sandbox import _syscalls as sc
from capsule.errors import FeatureStartError

__all__ = ["GrantDirs"]

_CWD: Final = -100  # AT_FDCWD: an absolute path ignores it
_DIRECTORY: Final = os.O_PATH | os.O_DIRECTORY
_BENEATH: Final = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_XDEV
_WHY: Final = {
    errno.ENOENT: "a directory on its path was moved or removed",
    errno.ELOOP: "a symbolic link now stands on its path (a grant never follows one)",
    errno.ENOTDIR: "something that is not a directory now stands on its path",
    errno.EXDEV: "its path now crosses into another file system (a mount point)",
    errno.EACCES: "its path can no longer be searched (permission denied)",
}


@final
class GrantDirs:
    """The held directory of every volume grant of one app (see the module docstring)."""

    def __init__(self, app: App) -> None:
        self._app = app
        #: volume reference as app.toml names it ("work2/sub/inner") -> held descriptor, or
        #: why it could not be opened when the app opened (the grant then never mounts)
        self._held: dict[str, int | str] = {}
        self._volumes: dict[str, int | str] = {}  # volume name -> held descriptor, or why not
        #: feature added at run time (a plugin) -> the volume references it holds
        self._added: dict[str, tuple[str, ...]] = {}

    def open(self) -> None:
        """Open every granted volume and subdirectory (once; before any container runs)."""
        for grant in self._grants(self._app.grants.values()):
            self._hold(grant)

    def add(self, feature: str, grant: FeatureGrant) -> None:
        """Open the directories of a feature added while the app runs (a plugin), the same
        way, before its container runs; what the app already holds is shared."""
        grants = self._grants([grant])
        for mount in grants:
            self._hold(mount)
        self._added[feature] = tuple(mount.volume for mount in grants)

    def release(self, feature: str) -> None:
        """Close what only ``feature`` (added by :meth:`add`) held."""
        self._added.pop(feature, None)
        kept = {m.volume for m in self._grants(self._app.grants.values())}
        kept.update(ref for refs in self._added.values() for ref in refs)
        names = {ref.partition("/")[0] for ref in kept}
        volumes = {fd for fd in self._volumes.values() if isinstance(fd, int)}
        for ref in [ref for ref in self._held if ref not in kept]:
            held = self._held.pop(ref)
            if isinstance(held, int) and held not in volumes:
                os.close(held)
        for name in [name for name in self._volumes if name not in names]:
            held = self._volumes.pop(name)
            if isinstance(held, int):
                os.close(held)

    def _hold(self, grant: MountGrant) -> None:
        name = grant.volume.partition("/")[0]
        if name not in self._volumes:
            self._volumes[name] = _opened(functools.partial(self._open_volume, name))
        volume, inside = self._volumes[name], self._inside(grant)
        if grant.volume in self._held:
            return
        if isinstance(volume, str) or not inside:
            self._held[grant.volume] = volume
        else:
            beneath = functools.partial(sc.openat2, volume, inside, _DIRECTORY, _BENEATH)
            self._held[grant.volume] = _opened(beneath)

    def close(self) -> None:
        held = {fd for fd in (*self._held.values(), *self._volumes.values()) if isinstance(fd, int)}
        self._held.clear()
        self._volumes.clear()
        self._added.clear()
        for fd in held:
            os.close(fd)

    def directory(self, feature: str, grant: MountGrant) -> int:
        """The held descriptor of ``grant``'s directory (owned here: do not close it), once its
        path is found to lead to that same directory still; FeatureStartError naming the
        feature, the grant and what changed otherwise."""
        where = f"the {grant.mode} grant of {grant.view} (volume {grant.volume}, {grant.host})"
        held = self._held.get(grant.volume)
        if held is None:  # pragma: no cover - every volume grant is opened by open()
            raise FeatureStartError(feature, f"{where} was not opened when the app opened")
        if isinstance(held, str):
            raise FeatureStartError(feature, f"refused to mount {where}: {held}")
        name, inside = grant.volume.partition("/")[0], self._inside(grant)
        volume = self._volumes[name]
        assert isinstance(volume, int)  # noqa: S101 - a held grant has a held volume
        self._check(feature, where, volume, functools.partial(self._open_volume, name))
        if inside:
            beneath = functools.partial(sc.openat2, volume, inside, _DIRECTORY, _BENEATH)
            self._check(feature, where, held, beneath)
        return held

    @staticmethod
    def _check(feature: str, where: str, held: int, opener: Callable[[], int]) -> None:
        """Refuse unless ``opener`` opens the directory ``held`` is."""
        try:
            now = opener()
        except OSError as exc:
            why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
            raise FeatureStartError(
                feature, f"refused to mount {where}: {why} since the app opened"
            ) from None
        try:
            found, expected = os.fstat(now), os.fstat(held)
        finally:
            os.close(now)
        if not os.path.samestat(found, expected):
            raise FeatureStartError(
                feature,
                f"refused to mount {where}: its path now leads to another directory "
                f"(inode {found.st_dev}:{found.st_ino}, not {expected.st_dev}:{expected.st_ino} "
                "as when the app opened): the granted directory was moved or replaced",
            )

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _grants(grants: Iterable[FeatureGrant]) -> list[MountGrant]:
        return [
            grant
            for feature in grants
            for grant in feature.mounts
            if grant.storage != "private" and grant.host is not None
        ]

    def _open_volume(self, name: str) -> int:
        return sc.openat2(_CWD, str(self._app.volumes[name]), _DIRECTORY, sc.RESOLVE_NO_SYMLINKS)

    def _inside(self, grant: MountGrant) -> str:
        """The grant's directory relative to its volume's real directory ("" for the volume)."""
        assert grant.host is not None  # noqa: S101 - private grants are never held
        volume = self._app.volumes[grant.volume.partition("/")[0]]
        inside = grant.host.relative_to(volume).as_posix()
        return "" if inside == "." else inside


def _opened(opener: Callable[[], int]) -> int | str:
    """What ``opener`` opened, or why it could not (the grant then refuses to mount)."""
    try:
        return opener()
    except OSError as exc:
        return f"it could not be opened when the app opened ({exc.strerror or exc})"
