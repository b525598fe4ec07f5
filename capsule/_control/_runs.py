"""Where the control socket of each running app lives, and how the command line finds it.

File operations only: no protocol. A ``capsule run`` keeps three files in its
supervisor's run directory ``<runtime>/<pid>-<starttime>/`` (``/run/capsule`` as root,
``$XDG_RUNTIME_DIR/capsule`` otherwise; the directory is 0700 and never bound into a
container), each 0600: ``control.sock``, ``control.token`` (the run's admin secret, hex)
and ``control.json`` (app, pid, run, start time). They go when the run ends; after a
crash, the next supervisor to start removes the whole stale run directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from capsule._control._errors import ControlRefusedError, NoRunningAppError
from capsule._sandbox._cgroup_files import run_name_for
from capsule._supervisor._rundir import runtime_base

__all__ = [
    "INFO_NAME",
    "SECRET_NAME",
    "SOCKET_NAME",
    "RunningApp",
    "new_secret",
    "read_secret",
    "running_apps",
    "select_app",
    "write_private",
]

SOCKET_NAME: Final = "control.sock"
SECRET_NAME: Final = "control.token"  # noqa: S105 - a file name, not a secret
INFO_NAME: Final = "control.json"
_SECRET_BYTES: Final = 32
_MAX_INFO: Final = 4096


@final
@dataclass(frozen=True, slots=True)
class RunningApp:
    """One ``capsule run`` whose control socket is up."""

    app: str
    pid: int
    run: str
    started: float
    directory: Path

    @property
    def socket(self) -> Path:
        return self.directory / SOCKET_NAME

    @property
    def secret_path(self) -> Path:
        return self.directory / SECRET_NAME

    def describe(self) -> str:
        return f"{self.app} (pid {self.pid})"


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (never through a symlink, never over a file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)  # whatever the umask
        file.write(text)


def new_secret() -> str:
    """A fresh admin secret: 32 random bytes as hex."""
    return secrets.token_hex(_SECRET_BYTES)


def read_secret(app: RunningApp) -> str:
    """The admin secret of ``app``; refused unless the file is ours and private."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(app.secret_path, flags)
    except PermissionError:
        raise ControlRefusedError(
            f"cannot read the admin secret of {app.describe()}: {app.secret_path} belongs "
            "to another user"
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise ControlRefusedError(f"{app.secret_path} is a symlink: not using it") from None
    with os.fdopen(fd, "r", encoding="ascii") as file:
        info = os.fstat(file.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
            raise ControlRefusedError(
                f"{app.secret_path} is not a private file of yours (mode "
                f"{stat.filemode(info.st_mode)}, uid {info.st_uid}): not using it"
            )
        return file.read(4 * _SECRET_BYTES).strip()


def _alive(run: str, pid: int) -> bool:
    try:
        return run_name_for(pid) == run
    except (OSError, ValueError):
        return False


def _load(directory: Path) -> RunningApp | None:
    """The run in ``directory`` if its owner is alive and its socket is there."""
    try:
        with (directory / INFO_NAME).open("rb") as file:
            info: Any = json.loads(file.read(_MAX_INFO))
        app, pid, started = info["app"], info["pid"], info["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(app, str) and isinstance(pid, int) and isinstance(started, int | float)):
        return None
    if not _alive(directory.name, pid) or not (directory / SOCKET_NAME).is_socket():
        return None
    return RunningApp(app, pid, directory.name, float(started), directory)


def running_apps(base: Path | None = None) -> list[RunningApp]:
    """Every live run under the runtime directory with a control socket, oldest first."""
    base = base or runtime_base()
    found: list[RunningApp] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in base.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                run = _load(entry)
                if run is not None:
                    found.append(run)
    return sorted(found, key=lambda run: (run.started, run.pid))


def _names(apps: Iterable[RunningApp]) -> str:
    return ", ".join(app.describe() for app in apps)


def select_app(apps: Sequence[RunningApp], wanted: str | None) -> RunningApp:
    """The run ``wanted`` names (an app name or a pid); the only one when it is None."""
    if not apps:
        raise NoRunningAppError("no capsule app is running here (start one with `capsule run APP`)")
    if wanted is None:
        if len(apps) > 1:
            raise NoRunningAppError(
                f"{len(apps)} apps are running ({_names(apps)}): choose one with --app NAME"
            )
        return apps[0]
    matches = [a for a in apps if a.app == wanted or (wanted.isdigit() and a.pid == int(wanted))]
    if not matches:
        raise NoRunningAppError(f"no running app is called {wanted!r} (running: {_names(apps)})")
    if len(matches) > 1:
        raise NoRunningAppError(
            f"{len(matches)} runs of {wanted!r} are running ({_names(matches)}): "
            "choose one with --app PID"
        )
    return matches[0]
