"""Host-side helpers for the security tests: identities, process scans and skip conditions.

Runs only in the test process, never inside a container (container-side probes live in the
test modules themselves, because their handlers are shipped into the container by value).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pytest

from capsule import FeatureCrashedError, Supervisor
from capsule._ipc._messages import SandboxStatus
from capsule._sandbox import _isolation

__all__ = [
    "RESTART_AT_ONCE",
    "UID_FLOOR",
    "Watch",
    "container_host_uid",
    "crash_signals",
    "descendants",
    "memory_holds",
    "needs_full_isolation",
    "needs_x86_64",
    "processes_of_uid",
    "sandbox_status",
    "zygote_pid",
]

#: container roots map to host uids from here up (the supervisor's dedicated range).
UID_FLOOR: Final = 2_000_000_000

_ISOLATION: Final = _isolation.probe()

needs_full_isolation = pytest.mark.skipif(
    _ISOLATION.level != "full" or os.geteuid() != 0,
    reason=(
        "the security suite runs containers at full isolation as root "
        f"(here: {_ISOLATION.level}, missing {', '.join(_ISOLATION.missing) or 'nothing'}, "
        f"euid {os.geteuid()})"
    ),
)
needs_x86_64 = pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the int 0x80 and x32 ABIs exist on x86_64 only"
)


def sandbox_status(sup: Supervisor, feature: str) -> SandboxStatus:
    """The sandbox report the running container of ``feature`` sent in its handshake."""
    instance = sup.feature(feature).instance
    assert instance is not None
    assert instance.hello is not None
    return instance.hello.status


def container_host_uid(status: SandboxStatus) -> int:
    """The host uid the container's root maps to, from its ``0 <host uid> 1`` uid map."""
    inside, outside, count = status.uid_map.split()
    assert (inside, count) == ("0", "1"), status.uid_map
    return int(outside)


def _status_fields(pid: int | str) -> dict[str, str]:
    fields: dict[str, str] = {}
    text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def processes_of_uid(uid: int) -> dict[int, list[int]]:
    """Every host process whose real uid is ``uid``: host pid -> its NSpid chain."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _status_fields(entry)
        except OSError:
            continue  # ended while we looked
        if int(fields["Uid"].split()[0]) == uid:
            found[int(entry)] = [int(p) for p in fields.get("NSpid", entry).split()]
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of host process ``pid`` (from /proc/PID/task/*/children)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                text = Path(f"/proc/{current}/task/{task}/children").read_text(encoding="ascii")
            except OSError:
                continue
            children = [int(child) for child in text.split()]
            found += children
            queue += children
    return found


def zygote_pid() -> int:
    """The pid of this process's running zygote (a direct child running capsule's zygote)."""
    for child in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"capsule._spawn._zygote" in cmdline:
            return child
    raise AssertionError("no zygote among this process's children")


def memory_holds(pid: int, needle: bytes) -> list[str]:
    """The mappings of process ``pid`` whose memory holds ``needle`` (read on the host)."""
    found = []
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r") or fields[-1] in {"[vvar]", "[vsyscall]"}:
                continue
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except OSError:
                continue  # a mapping the kernel will not hand out (a guard page, an I/O one)
            if needle in chunk:
                found.append(line.strip())
    return found


#: a restart policy that brings a container killed on purpose straight back.
RESTART_AT_ONCE: Final = {
    "policy": "on-failure",
    "max_restarts": 100,
    "window": "60s",
    "backoff": "10ms..10ms",
}


async def crash_signals(
    sup: Supervisor, feature: str, service: str, probes: Mapping[str, Any]
) -> dict[str, str]:
    """Call ``service`` once per probe; name how each call ended (a signal name when killed).

    The feature must restart on failure: each probe that kills its container runs the next one
    in a fresh container.
    """
    results: dict[str, str] = {}
    for name, request in probes.items():
        try:
            value = await sup.call(feature, service, request, timeout=10)
        except FeatureCrashedError as exc:
            results[name] = (
                signal.Signals(exc.signal).name
                if exc.signal is not None
                else f"exit code {exc.exit_code}"
            )
        else:
            results[name] = f"returned {value!r}"
    return results


class Watch:
    """Every access the kernel reports in host directories while a test attacks
    (inotify): an open, a read, a write, a create, a rename or a change of attributes of
    the directories or of any file directly in them. ``with Watch(dirs) as watch:`` then
    ``watch.events()``, read before the test looks at those directories itself."""

    _MASK: Final = 0x3FF  # IN_ACCESS .. IN_DELETE: reads and opens included
    _NAMES: Final = {
        0x1: "access",
        0x2: "modify",
        0x4: "attrib",
        0x8: "close-write",
        0x10: "close",
        0x20: "open",
        0x40: "moved-from",
        0x80: "moved-to",
        0x100: "create",
        0x200: "delete",
    }

    def __init__(self, directories: list[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._paths: dict[int, Path] = {}
        for directory in directories:
            wd = libc.inotify_add_watch(self._fd, os.fsencode(directory), self._MASK)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._paths[wd] = directory

    def events(self) -> list[str]:
        """What happened so far: ``"open /canary/inner/secret.txt"``, one a line."""
        found: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return found
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _, size = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + size].rstrip(b"\0").decode()
                offset += 16 + size
                path = self._paths.get(wd, Path("?")) / name
                found += [f"{what} {path}" for bit, what in self._NAMES.items() if mask & bit]

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self._fd)
