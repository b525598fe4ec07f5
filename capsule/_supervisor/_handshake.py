"""Checks a container's own report of its sandbox against what its policy requires.

Pure comparison: returns the problems found; killing the container is the caller's job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from capsule._ipc._messages import CHANNEL_FD, NAMESPACES, SandboxStatus

__all__ = ["Expectation", "check_status"]


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a container of this app must report: its host uid, seccomp, a Landlock ABI."""

    host_uid: int
    seccomp: bool
    landlock_abi: int


def _own_namespaces() -> dict[str, str]:
    return {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in NAMESPACES}


def check_status(status: SandboxStatus, expected: Expectation) -> list[str]:
    """Every way the container is weaker than ``expected`` (empty when it is as required)."""
    problems: list[str] = []
    own = _own_namespaces()
    for kind in NAMESPACES:
        theirs = status.namespaces.get(kind)
        if theirs is None or theirs == own[kind]:
            problems.append(f"it shares the supervisor's {kind} namespace")
    fields = status.uid_map.split()
    if len(fields) != 3 or fields[0] != "0" or fields[2] != "1":
        problems.append(f"its uid map is {status.uid_map!r}, not one mapped uid")
    elif int(fields[1]) == 0:
        problems.append("its root is the host's root")
    elif int(fields[1]) != expected.host_uid:
        problems.append(f"it runs as host uid {fields[1]}, not {expected.host_uid}")
    if not status.no_new_privs:
        problems.append("no_new_privs is not set")
    if status.dumpable:
        problems.append("it is dumpable")
    if status.capabilities:
        problems.append(f"it holds capabilities {status.capabilities:#x}")
    if expected.seccomp and status.seccomp != 2:
        problems.append(f"its seccomp mode is {status.seccomp}, not 2 (filter)")
    if status.landlock_abi < expected.landlock_abi:
        problems.append(
            f"its Landlock ABI is {status.landlock_abi}, not at least {expected.landlock_abi}"
        )
    extra = sorted(set(status.fds) - {0, 1, 2, CHANNEL_FD})
    if extra:
        problems.append(f"it has unexpected open descriptors {extra}")
    if status.pid != 1:
        problems.append(f"it is pid {status.pid}, not pid 1 of its own namespace")
    return problems
