"""Stale cgroup runs: the groups of supervisors that are gone, found and removed.

Touches only ``capsule/<pid>-<starttime>`` run directories whose supervisor no longer runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from capsule._sandbox._cgroup_detect import CgroupSupport
from capsule._sandbox._cgroup_files import CAPSULE_DIR, starttime
from capsule._sandbox._cgroup_kill import remove_groups
from capsule.errors import SandboxError

__all__ = [
    "cleanup_stale",
]

_RUN_RE: Final = re.compile(r"([0-9]+)-([0-9]+)\Z")


def _stale_runs(support: CgroupSupport) -> Iterator[tuple[str, list[Path]]]:
    """(run name, its directory in each hierarchy) for every run whose supervisor is gone."""
    found: dict[str, list[Path]] = {}
    for root in dict.fromkeys(support.roots.values()):
        capsule = root / CAPSULE_DIR
        try:
            entries = list(os.scandir(capsule))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if _RUN_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
                found.setdefault(entry.name, []).append(Path(entry.path))
    for run_name, dirs in sorted(found.items()):
        match = _RUN_RE.match(run_name)
        assert match is not None  # noqa: S101 - filtered above; narrows the type
        pid, start = int(match.group(1)), int(match.group(2))
        if starttime(pid) == start:
            continue  # a live supervisor: never touched
        yield run_name, dirs


def cleanup_stale(support: CgroupSupport) -> list[str]:
    """Kill and remove the run directories of supervisors that are gone; return their paths.

    A run directory is stale when no process has its pid, or the process with that pid started
    at another time (the pid was reused). Only ``capsule/<pid>-<starttime>`` directories are
    considered; groups below them are removed children first. A directory that cannot be
    removed (a process stuck in the kernel) is left for the next call and not returned.
    """
    removed: list[str] = []
    for _, dirs in _stale_runs(support):
        try:
            remove_groups(dirs, support.version)
        except SandboxError:
            removed.extend(str(d) for d in dirs if not d.exists())
            continue
        removed.extend(str(d) for d in dirs)
    return removed
