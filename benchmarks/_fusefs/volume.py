"""The fusefs benchmark's rows over a large volume: a million files (``--quick``: 20,000).

Must not decide the run's layout or report: ``fusefs.py`` and ``report`` own those.

A view's server keeps a bounded number of descriptors of the files it knows and reopens
the others beneath their parent when used. These rows show what that costs, and that it
holds, over a volume far larger than any open-file limit:

* **stat of a file looked up for the first time**: every file of the volume is stat'ed
  once, in order, over the rounds, so by the end the server knows them all;
* **open + read + close** of every tenth file, just after the stat of its slice of the
  volume, so most of their descriptors were evicted since their lookup.

Both run natively (the floor) and through fusefs; bindfs is left out here (it would
double a long run and says nothing about fusefs's descriptors). After the rows, the
server's open descriptors and resident memory are read from ``/proc/PID``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from _common import Job, gc_paused

__all__ = ["FILES_PER_DIR", "make_volume", "server_usage", "volume_jobs", "volume_path"]

FILES_PER_DIR: Final = 1000
READ_EVERY: Final = 10
_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

MakeJob = Callable[[str, str, int, Callable[[int], Sequence[float]]], Job]


def volume_path(root: Path, index: int) -> Path:
    return root / f"d{index // FILES_PER_DIR:04d}" / f"f{index % FILES_PER_DIR:03d}"


def _content(index: int) -> bytes:
    return f"{index:015d}\n".encode()


def make_volume(root: Path, files: int) -> None:
    """``files`` files of 16 bytes, a thousand to a directory, written natively."""
    for start in range(0, files, FILES_PER_DIR):
        directory = volume_path(root, start).parent
        directory.mkdir(parents=True)
        for index in range(start, min(files, start + FILES_PER_DIR)):
            fd = os.open(directory / f"f{index % FILES_PER_DIR:03d}", _FLAGS, 0o644)
            try:
                os.write(fd, _content(index))
            finally:
                os.close(fd)


class _Walk:
    """One file system's walk through the volume: a slice of stats per round, then reads
    of every tenth file of that slice."""

    def __init__(self, root: Path, files: int, rounds: int) -> None:
        self.root = root
        self.slices = _slices(files, rounds)
        self.last = range(0)

    def stats(self, count: int) -> list[int]:
        self.last = indices = next(self.slices)
        if len(indices) != count:
            raise RuntimeError(f"{count} stats asked for, the slice holds {len(indices)}")
        clock = time.perf_counter_ns
        samples: list[int] = []
        with gc_paused():
            for index in indices:
                path = volume_path(self.root, index)
                start = clock()
                size = os.stat(path).st_size
                samples.append(clock() - start)
                if size != len(_content(index)):
                    raise RuntimeError(f"{path}: wrong size {size}")
        return samples

    def reads(self, count: int) -> list[int]:
        clock = time.perf_counter_ns
        samples: list[int] = []
        with gc_paused():
            for index in self.last[::READ_EVERY][:count]:
                path = volume_path(self.root, index)
                start = clock()
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.read(fd, 64)
                finally:
                    os.close(fd)
                samples.append(clock() - start)
                if data != _content(index):
                    raise RuntimeError(f"{path}: wrong content")
        return samples


def volume_jobs(volumes: dict[str, Path], files: int, rounds: int, job: MakeJob) -> list[Job]:
    """The two rows for each file system whose view of the volume is in ``volumes``."""
    reads = files // rounds // READ_EVERY * rounds  # the same share in every round
    jobs: list[Job] = []
    for fs, root in volumes.items():
        walk = _Walk(root, files, rounds)
        jobs += [
            job("volume-stat", fs, files, walk.stats),
            job("volume-read", fs, reads, walk.reads),
        ]
    return jobs


def _slices(files: int, rounds: int) -> Iterator[range]:
    """The volume cut into ``rounds`` consecutive slices, as run_interleaved shares samples."""
    start = 0
    for round_index in range(rounds):
        share = files // rounds + (1 if round_index < files % rounds else 0)
        yield range(start, start + share)
        start += share


def server_usage(pid: int) -> dict[str, Any]:
    """The server's open descriptors and resident memory, now."""
    rss_kib = None
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return {
        "open_descriptors": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_mib": (rss_kib or 0) / 1024,
    }
