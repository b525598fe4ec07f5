"""Memory of processes as the benchmarks measure it: PSS from ``/proc``, over process trees.

Reads ``/proc`` only: it starts, stops and times nothing.

PSS (``Pss:`` of ``/proc/<pid>/smaps_rollup``) divides each shared page among the
processes sharing it, so the figures of several processes add up: pages they share
with the process they were forked from are counted once over all of them.
"""

from __future__ import annotations

import os

__all__ = ["children", "container_pss", "descendants", "private_bytes", "pss_bytes"]


def _rollup(pid: int, *fields: str) -> int:
    """The sum of ``fields`` (kB lines) of ``/proc/<pid>/smaps_rollup``, in bytes."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if name in fields:
                found[name] = int(value.split()[0]) * 1024
    missing = [name for name in fields if name not in found]
    if missing:
        raise RuntimeError(f"/proc/{pid}/smaps_rollup has no {', '.join(missing)} line")
    return sum(found.values())


def pss_bytes(pid: int) -> int:
    """The proportional set size of one process, from ``/proc/<pid>/smaps_rollup``."""
    return _rollup(pid, "Pss")


def private_bytes(pid: int) -> int:
    """The memory one process maps alone (its USS): what it copied from the zygote or
    allocated itself, and what ending it would free."""
    return _rollup(pid, "Private_Clean", "Private_Dirty")


def children(pid: int) -> list[int]:
    """The direct children of every thread of ``pid``."""
    found: list[int] = []
    for task in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listed:
                found += [int(word) for word in listed.read().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first."""
    order = [pid]
    for process in order:
        order += children(process)
    return order


def container_pss(pid: int, view_pid: int | None) -> tuple[int, int, int, int]:
    """The PSS of one capsule container, as ``(outer, inner, view server, processes)``.

    ``pid`` is the outer process the supervisor knows (``instance.pid``), whose
    descendants (the inner process running the feature) make up ``inner``;
    ``view_pid`` is the container's own file-system server (``instance.view.pid``), if
    it has one. ``processes`` counts every process summed.
    """
    tree = descendants(pid)
    if len(tree) < 2:
        raise RuntimeError(f"outer process {pid} has no inner process")
    sizes = [pss_bytes(process) for process in tree]
    view = 0 if view_pid is None else pss_bytes(view_pid)
    return sizes[0], sum(sizes[1:]), view, len(tree) + (view_pid is not None)
