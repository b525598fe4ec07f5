"""Killing, freezing and removing cgroups: the processes in a group and below it, the directories.

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

from capsule._sandbox._cgroup_files import cgroup_error, read_keyed, read_text, write_value
from capsule.errors import SandboxError

__all__ = [
    "freezer_file",
    "freezer_state",
    "kill_groups",
    "member_pids",
    "remove_groups",
    "set_frozen",
    "wait_frozen",
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
    """The pids listed in ``tops`` and every group below them."""
    pids: set[int] = set()
    for top in tops:
        for group in _subtree(top):
            text = read_text(group / "cgroup.procs")
            if text:
                pids.update(int(p) for p in text.split() if p.isdigit() and p != "0")
    return pids


def _signal_members(tops: Sequence[Path], spare: frozenset[int] = frozenset()) -> bool:
    """SIGKILL every process in ``tops`` but ``spare``; False if there was none.

    Each pid is pinned with a pidfd first and signalled only if it is still listed in a group
    afterwards, so a pid that was freed and reused in between is never hit.
    """
    pids = member_pids(tops) - spare
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


def freezer_file(top: Path, version: int) -> Path:
    """The file that freezes ``top``: ``cgroup.freeze`` (v2) or ``freezer.state`` (v1)."""
    return top / ("cgroup.freeze" if version == 2 else "freezer.state")


def freezer_state(top: Path, version: int) -> str | None:
    """``THAWED``, ``FREEZING`` (asked, not all there yet) or ``FROZEN``, as ``top`` reports it.

    None when the group has no freezer file (it is gone, or the kernel lacks the freezer).
    """
    if version == 2:
        asked = read_text(top / "cgroup.freeze")
        if asked is None:
            return None
        if read_keyed(top / "cgroup.events").get("frozen") == 1:
            return "FROZEN"
        return "FREEZING" if asked.strip() == "1" else "THAWED"
    text = read_text(top / "freezer.state")
    return None if text is None else text.strip()


def set_frozen(tops: Iterable[Path], version: int, *, frozen: bool) -> None:
    """Ask the freezer of each of ``tops`` to freeze or thaw it, without waiting.

    Freezing writes ``top`` alone (the groups below it follow); thawing a v1 group also thaws
    every group below it, since v1 keeps a group frozen that was frozen by itself. Tries every
    group, then raises SandboxError for the first write that failed.
    """
    failure: SandboxError | None = None
    value = ("1" if frozen else "0") if version == 2 else ("FROZEN" if frozen else "THAWED")
    for top in tops:
        groups = [top] if frozen or version == 2 else _subtree(top)
        for group in groups:
            path = freezer_file(group, version)
            try:
                write_value(path, value)
            except OSError as exc:
                failure = failure or cgroup_error(group, f"writing {value} to {path.name}", exc)
    if failure is not None:
        raise failure


def wait_frozen(tops: Sequence[Path], version: int, deadline: float) -> bool:
    """Wait until every one of ``tops`` reports FROZEN (or is gone); False at ``deadline``."""
    while True:
        if all(freezer_state(t, version) in ("FROZEN", None) for t in tops):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def kill_groups(
    tops: Sequence[Path],
    version: int,
    timeout: float = _KILL_TIMEOUT,
    spare: frozenset[int] = frozenset(),
) -> bool:
    """Kill every process in ``tops`` and their descendants; True once they are all gone.

    Processes whose pid is in ``spare`` are left alone (and not waited for); v2 then signals
    each process instead of writing ``cgroup.kill``.
    """
    deadline = time.monotonic() + timeout
    tops = [t for t in tops if t.is_dir()]
    if not tops:
        return True
    if version == 2 and not spare:
        for top in tops:
            with contextlib.suppress(OSError):  # gone already, or a kernel before 5.14
                write_value(top / "cgroup.kill", "1")
    freezers = [t for t in tops if (t / "freezer.state").exists()] if version == 1 else []
    if freezers:
        # frozen processes cannot fork or exit: the pid list stays complete while we signal.
        # A group frozen already (see set_frozen) is signalled the same way: its processes
        # only die once thawed, which the finally clause does.
        # Best effort: the signal loop below kills whether or not the freezer answered.
        with contextlib.suppress(SandboxError):
            set_frozen(freezers, version, frozen=True)
        try:
            wait_frozen(freezers, version, min(deadline, time.monotonic() + _FREEZE_TIMEOUT))
            _signal_members(tops, spare)
        finally:
            with contextlib.suppress(SandboxError):
                set_frozen(freezers, version, frozen=False)
    delay = 0.001
    while member_pids(tops) - spare:
        if time.monotonic() >= deadline:
            return False
        _signal_members(tops, spare)
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
