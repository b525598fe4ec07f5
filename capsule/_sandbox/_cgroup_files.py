"""Small cgroup file helpers shared by the cgroup modules: read, write, name checks, errors.

Plain file operations on one path at a time: no policy, no waiting, no knowledge of the layout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Final

from capsule.errors import SandboxError

__all__ = [
    "CAPSULE_DIR",
    "CONTROLLERS",
    "FIX_PERMISSION",
    "PROC",
    "UNIFIED",
    "cgroup_error",
    "check_name",
    "errname",
    "is_writable",
    "read_int",
    "read_keyed",
    "read_text",
    "run_name_for",
    "starttime",
    "write_value",
]

#: the controllers that carry limits, in the order they are reported.
CONTROLLERS: Final[tuple[str, ...]] = ("memory", "pids", "cpu")
#: the key under which :attr:`CgroupSupport.roots` names the single v2 hierarchy.
UNIFIED: Final = "unified"
#: the directory, under each root, that holds every group the cgroup modules create.
CAPSULE_DIR: Final = "capsule"
PROC: Final = Path("/proc")

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_NAME_MAX: Final = 128

FIX_PERMISSION: Final = (
    "run as root or under a systemd user slice with Delegate=yes "
    "(e.g. systemd-run --user --scope -p Delegate=yes ...)"
)


def errname(exc: OSError) -> str:
    code = exc.errno or 0
    return errno.errorcode.get(code, f"errno {code}")


def _fix_for(exc: OSError) -> str:
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return FIX_PERMISSION
    if code == errno.EROFS:
        return "the cgroup file system is mounted read-only: mount it read-write or " + (
            FIX_PERMISSION
        )
    if code == errno.EBUSY:
        return (
            "the group still holds processes or has controllers enabled below it; "
            "stop them, or move the supervisor into a leaf cgroup of its own"
        )
    if code == errno.ENOSPC:
        return "a cgroup.max.descendants or cgroup.max.depth limit was reached: raise it"
    if code == errno.EINVAL:
        return "the kernel rejected the value: choose a limit it accepts"
    if code == errno.ENOENT:
        return "the controller is not enabled for this group: enable it in cgroup.subtree_control"
    if code == errno.EEXIST:
        return "a group of that name exists already: remove it or choose another name"
    return "check the cgroup file system (see /proc/self/cgroup and /proc/self/mountinfo)"


def cgroup_error(group: Path, what: str, exc: OSError) -> SandboxError:
    """A SandboxError naming the cgroup, the file or action, the errno and a fix."""
    return SandboxError(
        f"cgroup {group}: {what} failed with {errname(exc)} ({exc.strerror}); fix: {_fix_for(exc)}"
    )


def write_value(path: Path, value: str) -> None:
    """Write ``value`` in a single write(2), as cgroup files require."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_text(path: Path) -> str | None:
    """The text of a cgroup file, or None if it (or its group) does not exist."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ESRCH):
            return None
        raise


def read_int(path: Path, *, unlimited: int | None = None) -> int | None:
    """An integer file; ``max`` (and v1 values at or above ``unlimited``) read as None."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if unlimited is not None and value >= unlimited:
        return None
    return value


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed file (``key value`` per line) such as cpu.stat or memory.events."""
    text = read_text(path)
    result: dict[str, int] = {}
    if text is None:
        return result
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                result[parts[0]] = int(parts[1])
    return result


def is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if there is no such pid."""
    try:
        data = (PROC / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or parentheses
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])  # fields[0] is field 3 (state), so field 22 is fields[19]


def run_name_for(pid: int) -> str:
    """The run directory name of supervisor ``pid``: ``<pid>-<starttime>``.

    Raises ProcessLookupError when the process does not exist.
    """
    start = starttime(pid)
    if start is None:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}")
    return f"{pid}-{start}"


def check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or len(name) > _NAME_MAX or _NAME_RE.match(name) is None:
        raise SandboxError(
            f"invalid cgroup {what} {name!r}: use 1 to {_NAME_MAX} characters of "
            "a-z, 0-9, '.', '_' and '-', starting with a letter or digit (no slashes)"
        )
