"""Finds what a supervisor of this process might have left behind: directories, mounts,
cgroups, processes.

Read-only checks for tests; it removes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import fusefs
from capsule._sandbox._cgroup_detect import detect
from capsule._sandbox._cgroup_files import run_name_for
from capsule._supervisor._rundir import runtime_base
from capsule._supervisor._supervisor import container_uids

__all__ = ["leftovers"]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text(encoding="ascii")
        except OSError:
            continue
        found += [int(child) for child in text.split()]
    return found


def _container_processes() -> list[str]:
    """Processes running as one of the host uids this process's containers map to."""
    if os.geteuid() != 0:
        return []  # rootless containers run as our own uid: the cgroup check covers them
    uids = container_uids(os.getpid())
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text(encoding="ascii")
        except OSError:
            continue
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
        if uid in uids:
            found.append(f"container process {entry.name} (uid {uid})")
    return found


def leftovers() -> list[str]:
    """Run directories, view mounts, cgroups, child and container processes of this process's
    supervisors."""
    name = run_name_for(os.getpid())
    found: list[str] = []
    rundir = runtime_base() / name
    found += [f"view mount {point}" for point, _ in fusefs.fuse_mounts_beneath(str(rundir))]
    if rundir.exists():
        found.append(f"run directory {rundir}")
    support = detect()
    for root in support.roots.values():
        group = Path(root) / "capsule" / name
        if group.exists():
            found.append(f"cgroup {group}")
    for child in _children(os.getpid()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"process {child}: {cmdline.strip()}")
    return found + _container_processes()
