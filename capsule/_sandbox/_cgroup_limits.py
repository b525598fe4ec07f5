"""Cgroup limits: check the requested memory, pids and CPU values and write them to a group.

Writes only into the group directories it is given; decides no policy of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from capsule._sandbox._cgroup_files import UNIFIED, cgroup_error, write_value
from capsule.errors import SandboxError

__all__ = [
    "check_limits",
    "limit_v1",
    "limit_v2",
]

_CPU_PERIOD_US: Final = 100_000
_CPU_MIN_QUOTA_US: Final = 1_000


def check_limits(*, memory: int | None, pids: int | None, cpu: float | None) -> None:
    problems = []
    if memory is not None and (isinstance(memory, bool) or memory <= 0):
        problems.append(f"memory={memory!r} (bytes, > 0)")
    if pids is not None and (isinstance(pids, bool) or pids <= 0):
        problems.append(f"pids={pids!r} (> 0)")
    if cpu is not None and not cpu > 0:
        problems.append(f"cpu={cpu!r} (CPUs, > 0)")
    if problems:
        raise SandboxError(f"invalid cgroup limits: {', '.join(problems)}")


def _quota_us(cpu: float) -> int:
    return max(_CPU_MIN_QUOTA_US, int(cpu * _CPU_PERIOD_US))


def _apply(group: Path, settings: Sequence[tuple[str, str, bool]]) -> None:
    """Write each (file, value, required) in order; optional files are skipped if absent."""
    for filename, value, required in settings:
        path = group / filename
        if not required and not path.exists():
            continue
        try:
            write_value(path, value)
        except OSError as exc:
            raise cgroup_error(group, f"writing {value!r} to {filename}", exc) from exc


def limit_v1(
    dirs: Mapping[str, Path],
    *,
    memory: int | None,
    pids: int | None,
    cpu: float | None,
    usable: frozenset[str],
) -> None:
    if memory is not None and "memory" in usable:
        group = dirs["memory"]
        # memsw (memory + swap) must be >= the memory limit, so it is written second
        _apply(
            group,
            [
                ("memory.limit_in_bytes", str(memory), True),
                ("memory.memsw.limit_in_bytes", str(memory), False),
            ],
        )
        # a preference only: the memsw limit above is what keeps swap from bypassing the limit
        with contextlib.suppress(OSError):
            _apply(group, [("memory.swappiness", "0", False)])
    if pids is not None and "pids" in usable:
        _apply(dirs["pids"], [("pids.max", str(pids), True)])
    if cpu is not None and "cpu" in usable:
        _apply(
            dirs["cpu"],
            [
                ("cpu.cfs_period_us", str(_CPU_PERIOD_US), True),
                ("cpu.cfs_quota_us", str(_quota_us(cpu)), True),
            ],
        )


def limit_v2(
    dirs: Mapping[str, Path],
    *,
    memory: int | None,
    pids: int | None,
    cpu: float | None,
    usable: frozenset[str],
) -> None:
    group = dirs[UNIFIED]
    settings: list[tuple[str, str, bool]] = []
    if memory is not None and "memory" in usable:
        settings += [("memory.max", str(memory), True), ("memory.swap.max", "0", False)]
    if pids is not None and "pids" in usable:
        settings.append(("pids.max", str(pids), True))
    if cpu is not None and "cpu" in usable:
        settings.append(("cpu.max", f"{_quota_us(cpu)} {_CPU_PERIOD_US}", True))
    _apply(group, settings)
