"""Each supervisor's private runtime directory, and the cleanup of ones a crash left behind.

A run directory is ``<runtime>/<pid>-<starttime>``: a reused pid never matches, so
a directory whose owner is gone is known stale. File operations only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from capsule._sandbox._cgroup_files import run_name_for

__all__ = ["RunDir", "runtime_base"]


def runtime_base() -> Path:
    """``/run/capsule`` as root; ``$XDG_RUNTIME_DIR/capsule`` or ``/tmp/capsule-UID`` otherwise."""
    if os.geteuid() == 0:
        return Path("/run/capsule")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "capsule"
    return Path(f"/tmp/capsule-{os.geteuid()}")  # noqa: S108 - per-user, 0700, ownership checked


def _alive(run_name: str) -> bool:
    pid_text, _, _ = run_name.partition("-")
    if not pid_text.isdigit():
        return False
    try:
        return run_name_for(int(pid_text)) == run_name
    except OSError:
        return False


def _unmount_beneath(path: Path) -> None:
    """Detach every mount beneath ``path``; views first have their FUSE connection aborted,
    so a server that still hangs there can never block the unmount or the removal."""
    # only a clean-up needs these: `capsule ps` finds runs without pyfuse3 or ctypes
    import fusefs  # noqa: PLC0415
    from capsule._sandbox import _syscalls as sc  # noqa: PLC0415

    for _, connection in fusefs.fuse_mounts_beneath(str(path)):
        fusefs.abort_connection(connection)
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        with contextlib.suppress(OSError):
            sc.umount2(point, sc.MNT_DETACH)


class RunDir:
    """This supervisor's directory: created 0700 on open, removed on close."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or runtime_base()
        self.name = run_name_for(os.getpid())
        self.path = self.base / self.name

    @property
    def views(self) -> Path:
        """Where each container's file-system server mounts its view (in the host's namespace)."""
        return self.path / "views"

    @property
    def stage(self) -> Path:
        """The empty directory each container mounts its new root on (in its own namespace)."""
        return self.path / "stage"

    @property
    def build_data(self) -> Path:
        """The runtime's build data rewritten for where containers see it (see ``_spawn``)."""
        return self.path / "runtime"

    def open(self) -> list[Path]:
        """Create the directory; returns the stale run directories it removed first."""
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.base.lstat()
        if info.st_uid != os.geteuid() or not self.base.is_dir() or self.base.is_symlink():
            raise PermissionError(f"{self.base} is not a directory owned by you: remove it")
        removed = self.cleanup_stale()
        self.path.mkdir(mode=0o700, exist_ok=True)
        self.stage.mkdir(mode=0o700, exist_ok=True)
        self.views.mkdir(mode=0o700, exist_ok=True)
        self.build_data.mkdir(mode=0o700, exist_ok=True)
        return removed

    def cleanup_stale(self) -> list[Path]:
        removed: list[Path] = []
        for entry in self.base.iterdir():
            if entry.name == self.name or _alive(entry.name):
                continue
            _unmount_beneath(entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        return removed

    def close(self) -> None:
        _unmount_beneath(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
