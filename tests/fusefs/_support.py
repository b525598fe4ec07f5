"""Helpers for the fusefs tests: views, errno outcomes, polling with a deadline, and client
processes that touch a mount (optionally chrooted into it, as a container would be).

Nothing here mounts anything: the tests start :class:`fusefs.ServerProcess` themselves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from fusefs import Denied, MountKind, MountSpec, ServerProcess, ViewSpec

_T = TypeVar("_T")

#: how long a poll waits for something the server reports at once
SOON: Final = 3.0

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (chroot, bind mounts, other uids, fuse abort)"
)


def view(*mounts: MountSpec, **options: Any) -> ViewSpec:
    """A view of ``mounts`` for the feature ``feat``."""
    options.setdefault("owner", "feat")
    return ViewSpec(mounts=mounts, **options)


def mount(view_path: str, kind: MountKind, backing: Path, **options: Any) -> MountSpec:
    upper = options.pop("upper", None)
    return MountSpec(
        view_path=view_path,
        kind=kind,
        backing=str(backing),
        upper=None if upper is None else str(upper),
        **options,
    )


def errno_of(action: Callable[..., object], *args: Any) -> int | None:
    """None if ``action(*args)`` succeeds, else the errno of the OSError it raised."""
    try:
        action(*args)
    except OSError as exc:
        return exc.errno
    return None


def read(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: Path | str, data: bytes) -> None:
    """Write through raw descriptors, so an errno surfaces at the call that caused it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def wait_until(predicate: Callable[[], _T | None], timeout: float = SOON, what: str = "") -> _T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or predicate}")
        time.sleep(0.01)


def denial(server: ServerProcess, **fields: object) -> Denied:
    """The first Denied the server reported with these field values (polled)."""

    def find() -> Denied | None:
        for message in server.denials:
            if all(getattr(message, k) == v for k, v in fields.items()):
                return message
        return None

    return wait_until(find, what=f"a Denied with {fields}; got {server.denials}")


def held_on_host(volume: Path, server: int, opened: Path | None = None) -> tuple[int, int]:
    """What a view of ``volume`` makes the host hold, as a quota counts it: ``(bytes,
    inodes)``, the apparent sizes of its regular files and the number of its files,
    directories and symlinks (each once, however many names it has), beneath ``volume``
    and unlinked but still held open by the view server whose pid is ``server`` (beneath
    ``opened``, if given: a cow mount's server opens its files through the overlay). In a cow
    mount's upper layer, each whiteout (a character device 0/0, maybe a link of one shared
    by all) counts as an inode of its own, as the quota counts it."""
    found: dict[tuple[int, int] | str, os.stat_result] = {}
    for directory, dirs, files in os.walk(volume):  # never into a symlink
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):  # removed while walking: polled
                path = os.path.join(directory, name)
                st = os.lstat(path)
                whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
                found[path if whiteout else (st.st_dev, st.st_ino)] = st
    fds = f"/proc/{server}/fd"
    for fd in os.listdir(fds):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing: polled
            link = os.path.join(fds, fd)
            # the server's stdout may be a deleted file too (pytest's capture), not the view's
            if os.readlink(link).startswith(f"{opened or volume}/"):
                st = os.stat(link)
                if st.st_nlink == 0:
                    found[st.st_dev, st.st_ino] = st
    size = sum(st.st_size for st in found.values() if stat.S_ISREG(st.st_mode))
    return size, len(found)


def mountpoints_beneath(directory: Path) -> list[str]:
    """Every mount point of this mount namespace at or beneath ``directory``."""
    prefix = str(directory).rstrip("/")
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def children() -> set[int]:
    """Processes whose parent is this one (zombies included)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if int(text.rpartition(")")[2].split()[1]) == os.getpid():
            found.add(int(entry))
    return found


_PROLOGUE: Final = """\
import errno, json, os, sys, time
def outcome(action, *args):
    try:
        result = action(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return result if isinstance(result, (str, int, list)) else "ok"
def readfile(path):
    with open(path, "rb") as f:
        return f.read().decode()
"""


def client_command(code: str, *, root: Path | None = None, uid: int | None = None) -> list[str]:
    """A Python command that runs ``code`` (chrooted into ``root``, as ``uid``, if given)."""
    setup = _PROLOGUE
    if root is not None:
        setup += f"os.chroot({str(root)!r}); os.chdir('/')\n"
    if uid is not None:
        setup += f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
    return [sys.executable, "-c", setup + code]


def client(
    code: str, *, root: Path | None = None, uid: int | None = None, timeout: float = 20.0
) -> Any:
    """Run ``code`` in a process of its own; it prints one JSON value, returned here."""
    done = subprocess.run(
        client_command(code, root=root, uid=uid),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class BlockedClient:
    """A client process that says ``ready`` and then does one access that may block."""

    def __init__(self, code: str) -> None:
        self.process = subprocess.Popen(
            client_command('print("ready", flush=True)\n' + code),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10.0)
        assert ready, "the client did not start"
        assert self.process.stdout.readline() == "ready\n"

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self, timeout: float) -> Any:
        """What the client printed after its access; fails if it is not done in time."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the client is still blocked after {timeout} s")
        assert self.process.returncode == 0, err
        return json.loads(out)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def errname(number: int) -> str:
    return errno.errorcode[number]
