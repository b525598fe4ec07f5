"""Host-side judges for on-demand features: what of one feature's containers exists on the host.

Reads /proc, the cgroup trees and the mount table only; it changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import fusefs
from capsule import Supervisor
from capsule._sandbox._cgroup_detect import detect
from capsule._sandbox._cgroup_files import run_name_for
from capsule._supervisor._rundir import runtime_base


def traces(sup: Supervisor, name: str) -> list[str]:
    """Processes, view mounts and cgroups of feature ``name``'s containers, as the host sees
    them: a process is one in a cgroup of the feature (``<run>/<name>-<generation>``)."""
    run = run_name_for(os.getpid())
    mark = f"/{run}/{name}-"
    found = [
        f"view mount {point}"
        for point, _ in fusefs.fuse_mounts_beneath(str(runtime_base() / run))
        if f"/{name}-" in point
    ]
    for root in detect().roots.values():
        group = Path(root) / "capsule" / run
        if group.is_dir():
            found += [f"cgroup {g}" for g in group.iterdir() if g.name.startswith(f"{name}-")]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "cgroup").read_text(encoding="ascii")
        except OSError:
            continue
        if mark in text:
            found.append(f"process {entry.name}")
    return found


def feature_pids(sup: Supervisor) -> int:
    """How many processes of this run's containers exist (any feature)."""
    run = run_name_for(os.getpid())
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "cgroup").read_text(encoding="ascii")
            except OSError:
                continue
            count += f"/{run}/" in text
    return count
