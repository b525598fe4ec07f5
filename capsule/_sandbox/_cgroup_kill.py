"""Killing and removing cgroups: every process in a group and below it, then the directories.

Bounded waits only (a process stuck in the kernel may outlive them, and removal reports it);
signals only processes listed in the groups it is given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from capsule._sandbox._cgroup_files import cgroup_error, read_text, write_value
from capsule.errors import SandboxError

__all__ = [
    "kill_groups",
    "member_pids",
    "remove_groups",
]

_KILL_TIMEOUT: Final = 2.0
_FREEZE_TIMEOUT: Final = 0.5
_RMDIR_TIMEOUT: Final = 2.0


def _subtree(top: Path) -> list[Path]:
    """``top`` and every cgroup below it, children before parents; [] if ``top`` is gone."""
    if not top.is_dir():
        return []
    return [Path(dirpath) for dirpath, _, _ in os.walk(top, topdown=False)]


def member_pids(tops: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for top in tops:
        for group in _subtree(top):
            text = read_text(group / "cgroup.procs")
            if text:
                pids.update(int(p) for p in text.split() if p.isdigit() and p != "0")
    return pids


def _signal_members(tops: Sequence[Path]) -> bool:
    """SIGKILL every process in ``tops``; False if there was none.

    Each pid is pinned with a pidfd first and signalled only if it is still listed in a group
    afterwards, so a pid that was freed and reused in between is never hit.
    """
    pids = member_pids(tops)
    if not pids:
        return False
    pinned: dict[int, int | None] = {}
    try:
        for pid in pids:
            try:
                pinned[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:
                pinned[pid] = None  # no pidfd support: fall back to kill(2)
        still = member_pids(tops)
        for pid, fd in pinned.items():
            if pid not in still:
                continue
            with contextlib.suppress(ProcessLookupError):
                if fd is None:
                    os.kill(pid, signal.SIGKILL)
                else:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        for fd in pinned.values():
            if fd is not None:
                os.close(fd)
    return True


def _set_freezer(tops: Iterable[Path], state: str) -> None:
    for top in tops:
        groups = _subtree(top) if state == "THAWED" else [top]
        for group in groups:
            with contextlib.suppress(OSError):
                write_value(group / "freezer.state", state)


def _wait_frozen(tops: Sequence[Path], deadline: float) -> None:
    while time.monotonic() < deadline:
        if all((read_text(t / "freezer.state") or "FROZEN").strip() == "FROZEN" for t in tops):
            return
        time.sleep(0.002)


def kill_groups(tops: Sequence[Path], version: int, timeout: float = _KILL_TIMEOUT) -> bool:
    """Kill every process in ``tops`` and their descendants; True once they are all gone."""
    deadline = time.monotonic() + timeout
    tops = [t for t in tops if t.is_dir()]
    if not tops:
        return True
    if version == 2:
        for top in tops:
            with contextlib.suppress(OSError):  # gone already, or a kernel before 5.14
                write_value(top / "cgroup.kill", "1")
    freezers = [t for t in tops if (t / "freezer.state").exists()] if version == 1 else []
    if freezers:
        # frozen processes cannot fork or exit: the pid list stays complete while we signal
        _set_freezer(freezers, "FROZEN")
        try:
            _wait_frozen(freezers, min(deadline, time.monotonic() + _FREEZE_TIMEOUT))
            _signal_members(tops)
        finally:
            _set_freezer(freezers, "THAWED")
    delay = 0.001
    while member_pids(tops):
        if time.monotonic() >= deadline:
            return False
        _signal_members(tops)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def remove_groups(tops: Sequence[Path], version: int) -> None:
    """Kill, then rmdir ``tops`` and everything below them, retrying briefly on EBUSY."""
    kill_groups(tops, version)
    deadline = time.monotonic() + _RMDIR_TIMEOUT
    failure: SandboxError | None = None
    for top in tops:
        for group in _subtree(top):
            delay = 0.002
            while True:
                try:
                    group.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        kill_groups(tops, version, timeout=delay)
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                        continue
                    failure = failure or cgroup_error(group, "rmdir", exc)
                    break
                else:
                    break
    if failure is not None:
        raise failure
