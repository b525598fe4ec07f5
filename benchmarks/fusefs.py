"""fusefs against the backing directory itself and against bindfs, operation by operation.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Every operation runs three ways over one backing directory, in one run and on one machine:

* **native**: the backing directory itself. This is each operation's floor;
* **bindfs**: Debian's C FUSE passthrough (bindfs 1.14 on libfuse 2.9's high-level API,
  single-threaded as fusefs is), in the foreground with ``-o auto_cache,entry_timeout=T,
  attr_timeout=T,negative_timeout=0,big_writes``, where T is the view's ``cache_timeout``.
  That is kernel caching as fusefs does it: names and attributes kept for T seconds, no
  negative entries, the page cache kept on a reopen when mtime and size are unchanged,
  and writes of up to 128 KiB per request (libfuse 2 without ``big_writes`` sends 4 KiB).
  It gets the same mount readahead (``/sys/class/bdi/<dev>/read_ahead_kb``) as the
  fusefs mount, so fusefs / bindfs compares the servers more than their settings; what
  libfuse 2 cannot change stays different (read requests of at most 128 KiB where
  libfuse 3 allows 1 MiB; plain READDIR where pyfuse3 always uses READDIRPLUS, which
  also returns every entry's attributes). Its rows are skipped, with the reason, when
  ``bindfs`` is missing or cannot mount;
* **fusefs**: a view with one rw mount (``/data``) over the backing directory, served by
  ``fusefs.ServerProcess`` (a ``python -m fusefs`` child).

Measures (bulk rows as time per MiB, the others per call):

* sequential read of a large file (256 MiB; ``--quick`` 64 MiB) with 1 MiB ``readv``
  calls into one reused page-aligned buffer, so the figure is the file system's and not
  Python's allocator's. **Warm**: the file was read through the same mount just before,
  so its pages are in that mount's page cache. **Cold**: the mount's page cache of the
  file is empty while the backing file is in the page cache. PERFORMANCE.md's cold anchor
  (pyfuse3 ~2.7 GiB/s against ~20 GiB/s native from the page cache) measures the FUSE
  layer, not the disk, so before each cold sample the script calls
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` on a descriptor opened *through the mount*,
  which drops exactly that mount's cached pages of the file, then reads the backing file
  natively (untimed) to be sure it is cached. ``echo 1 > /proc/sys/vm/drop_caches``
  would drop the backing file too, and every other page cache of the machine, disturbing
  whatever else runs. For context, a native read of the backing file after the same
  ``DONTNEED`` on it (from disk) is reported beside them;
* open + read + close of a 4 KiB file (cycling over 100 of them);
* stat of a file whose attributes the kernel has cached;
* stat of a name that does not exist: neither FUSE file system caches negative entries,
  so each call is **one FUSE round trip** (a lookup answered ENOENT). The target for
  open + read + close is stated against this row of the same file system;
* listing of a directory of 1,000 entries (``os.listdir``); beside the three, the
  **pyfuse3 floor** of it (``_fusefs/floor.py``): a pyfuse3 file system whose listing
  does no work per entry but hand a ready attributes object to ``readdir_reply``, which
  is what any pyfuse3 server pays (READDIRPLUS round trips, the kernel taking in every
  entry's attributes) before its own work; its row is skipped, with the reason, when it
  cannot mount;
* sequential write of 64 MiB (``--quick`` 16 MiB) in 128 KiB writes to a new file, then
  ``fsync`` and close (the previous sample's file is unlinked, untimed);
* create + write 4 KiB + close of a new file (the files are unlinked after each slice,
  untimed).
* over a large volume (1,000,000 files of 16 bytes, a thousand to a directory;
  ``--quick`` 20,000), native and fusefs only: a stat of each file, the first lookup
  of it, and an open + read + close of every tenth file after its descriptor was mostly
  evicted (``_fusefs/volume.py``); then the server's open descriptors and resident
  memory. Making the volume takes a while (about 10 s per million files).

All measures run interleaved, in rounds, so machine noise spreads over all of them.
Everything the run makes (temporary directory, bindfs process and mount, fusefs server
and mount) is removed on the way out, also on Ctrl-C, SIGTERM or an error. Run:
``python benchmarks/fusefs.py [--json PATH] [--quick]`` (as root for bindfs's
``allow_other`` and the readahead setting; otherwise those are left as they are).
The targets checked are the project's: fusefs bulk sequential read >= 70 % of native
when warm and >= 2.5 GiB/s cold; open + read + close <= 1.3x one FUSE round trip; stat
with caching <= 2x native; a listing of 1,000 entries <= 2x bindfs (checked only when
bindfs is there).
"""

from __future__ import annotations

import itertools
import mmap
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Final

# first: importing _common takes benchmarks/ off sys.path, where this helpers' package is
import _fusefs  # noqa: F401 - imported for its modules below, found through it

# isort: split
from _common import (
    Job,
    flatten,
    gc_paused,
    machine_info,
    parse_arguments,
    percentile,
    report_payload,
    run_interleaved,
    write_json,
)
from _fusefs.report import (
    DISK_ROW,
    FLOOR_ROW,
    GROUP,
    GROUPS,
    find_row,
    gib_per_s,
    measures_json,
    print_measures,
    print_summary,
    summary,
    with_targets,
)
from _fusefs.setup import (
    FULL,
    MIB,
    QUICK,
    READ_CHUNK,
    SMALL,
    WRITE_CHUNK,
    Setup,
    Sizes,
    Tree,
    mounted,
)
from _fusefs.volume import server_usage, volume_jobs

NAME: Final = "fusefs"


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run like Ctrl-C does: every mount and process is cleaned up."""
    raise SystemExit(128 + signum)


# -- the measures -------------------------------------------------------------------------------


def read_pass(path: Path, buffer: mmap.mmap) -> int:
    """Read ``path`` from start to end in ``len(buffer)`` reads; the bytes read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        total = 0
        while count := os.readv(fd, [buffer]):
            total += count
    finally:
        os.close(fd)
    return total


def drop_cached(path: Path) -> None:
    """Drop the page cache of ``path`` as reached by that path (for a mount: its own pages)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_jobs(trees: dict[str, Tree], sizes: Sizes, buffer: mmap.mmap) -> list[Job]:
    size = sizes.big_mib * MIB
    backing = trees["native"].big

    def timed_pass(path: Path) -> float:
        start = time.perf_counter_ns()
        count = read_pass(path, buffer)
        elapsed = time.perf_counter_ns() - start
        if count != size:
            raise RuntimeError(f"read {count} bytes of {path}, expected {size}")
        return elapsed / sizes.big_mib

    def warm(tree: Tree) -> Callable[[int], list[float]]:
        def run(count: int) -> list[float]:
            with gc_paused():
                read_pass(tree.big, buffer)  # fills this mount's page cache
                return [timed_pass(tree.big) for _ in range(count)]

        return run

    def cold(tree: Tree) -> Callable[[int], list[float]]:
        def run(count: int) -> list[float]:
            samples: list[float] = []
            with gc_paused():
                for _ in range(count):
                    drop_cached(tree.big)
                    read_pass(backing, buffer)  # the backing file stays in the page cache
                    samples.append(timed_pass(tree.big))
            return samples

        return run

    def from_disk(count: int) -> list[float]:
        samples: list[float] = []
        with gc_paused():
            for _ in range(count):
                drop_cached(backing)
                samples.append(timed_pass(backing))
        return samples

    jobs = [_job("read-warm", fs, sizes.warm_reads, warm(tree)) for fs, tree in trees.items()]
    jobs.append(_job("read-cold", "native", sizes.cold_reads, from_disk, row=DISK_ROW))
    jobs += [
        _job("read-cold", fs, sizes.cold_reads, cold(tree))
        for fs, tree in trees.items()
        if fs != "native"
    ]
    return jobs


def _per_call(call: Callable[[], object], count: int, warmup: int) -> list[int]:
    clock = time.perf_counter_ns
    durations: list[int] = []
    with gc_paused():
        for _ in range(warmup):
            call()
        for _ in range(count):
            start = clock()
            call()
            durations.append(clock() - start)
    return durations


def _listing(path: Path, entries: int) -> Callable[[], None]:
    def listing() -> None:
        if len(os.listdir(path)) != entries:
            raise RuntimeError(f"{path}: wrong number of entries")

    return listing


def _timed(call: Callable[[], None], warmup: int) -> Callable[[int], list[int]]:
    return lambda count: _per_call(call, count, warmup)


def small_jobs(trees: dict[str, Tree], sizes: Sizes, floor: Path | None) -> list[Job]:
    """open + read + close, cached stat, a missing name, and a listing, on each file system;
    and the listing of the pyfuse3 floor (``floor``, its listing directory), if mounted."""
    small_buffer = mmap.mmap(-1, SMALL)
    jobs: list[Job] = []
    for fs, tree in trees.items():
        paths = [tree.small(index) for index in range(sizes.small_files)]
        next_path = itertools.cycle(paths).__next__

        def open_read_close(next_path: Callable[[], Path] = next_path) -> None:
            fd = os.open(next_path(), os.O_RDONLY | os.O_CLOEXEC)
            try:
                count = os.readv(fd, [small_buffer])
            finally:
                os.close(fd)
            if count != SMALL:
                raise RuntimeError(f"read {count} bytes of a {SMALL}-byte file")

        def stat(next_path: Callable[[], Path] = next_path) -> None:
            if os.stat(next_path()).st_size != SMALL:
                raise RuntimeError("a small file has the wrong size")

        def missing(path: Path = tree.missing) -> None:
            try:
                os.stat(path)
            except FileNotFoundError:
                return
            raise RuntimeError(f"{path} exists")

        listing = _listing(tree.listing, sizes.listing_entries)
        every_file = max(sizes.warmup, sizes.small_files)  # the slice starts with all cached
        jobs += [
            _job("open-read-close", fs, sizes.small_reads, _timed(open_read_close, every_file)),
            _job("stat", fs, sizes.stats, _timed(stat, every_file)),
            _job("round-trip", fs, sizes.misses, _timed(missing, sizes.warmup)),
            _job("listdir", fs, sizes.listings, _timed(listing, 1)),
        ]
    if floor is not None:
        listing = _listing(floor, sizes.listing_entries)
        jobs.append(_job("listdir", "floor", sizes.listings, _timed(listing, 1), row=FLOOR_ROW))
    return jobs


def write_jobs(trees: dict[str, Tree], sizes: Sizes) -> list[Job]:
    """A sequential write of a new file + fsync, and small-file creates, on each file system."""
    chunk = os.urandom(WRITE_CHUNK)
    small = os.urandom(SMALL)
    chunks = sizes.write_mib * MIB // WRITE_CHUNK
    created = itertools.count()
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    jobs: list[Job] = []

    def write_all(fd: int, data: bytes) -> None:
        if os.write(fd, data) != len(data):
            raise RuntimeError("a short write")

    for fs, tree in trees.items():
        target = tree.writes / "sequential.bin"

        def sequential(count: int, target: Path = target) -> list[float]:
            samples: list[float] = []
            with gc_paused():
                for _ in range(count):
                    target.unlink(missing_ok=True)
                    start = time.perf_counter_ns()
                    fd = os.open(target, flags | os.O_TRUNC, 0o644)
                    try:
                        for _ in range(chunks):
                            write_all(fd, chunk)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    samples.append((time.perf_counter_ns() - start) / sizes.write_mib)
            return samples

        def create(count: int, folder: Path = tree.writes) -> list[int]:
            made: list[Path] = []

            def one() -> None:
                path = folder / f"c{next(created):07d}"
                made.append(path)
                fd = os.open(path, flags | os.O_EXCL, 0o644)
                try:
                    write_all(fd, small)
                finally:
                    os.close(fd)

            try:
                return _per_call(one, count, sizes.warmup)
            finally:
                for path in made:
                    path.unlink(missing_ok=True)

        jobs += [
            _job("write", fs, sizes.writes, sequential),
            _job("create", fs, sizes.creates, create),
        ]
    return jobs


def _job(
    group: str, fs: str, samples: int, run: Callable[[int], Sequence[float]], *, row: str = ""
) -> Job:
    per_mib = GROUP[group].per_mib
    return Job(
        f"{GROUP[group].title}: {row or fs}",
        samples,
        run,
        extra={
            "group": group,
            "fs": fs,
            "row": row or fs,
            "unit": "per MiB" if per_mib else "call",
        },
    )


# -- the run ------------------------------------------------------------------------------------


def run(sizes: Sizes, setup: Setup) -> tuple[list[Job], list[list[list[float]]]]:
    buffer = mmap.mmap(-1, READ_CHUNK)  # page-aligned, reused by every read
    jobs = [
        *read_jobs(setup.trees, sizes, buffer),
        *small_jobs(setup.trees, sizes, setup.floor_listing),
        *write_jobs(setup.trees, sizes),
        *volume_jobs(
            {fs: tree.volume for fs, tree in setup.trees.items() if fs != "bindfs"},
            sizes.volume_files,
            sizes.rounds,
            _job,
        ),
    ]
    order = {group.key: index for index, group in enumerate(GROUPS)}
    jobs.sort(key=lambda job: order[job.extra["group"]])  # stable: native, bindfs, fusefs
    return jobs, run_interleaved(jobs, rounds=sizes.rounds)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(
        NAME, "fusefs against native and bindfs: reads, small files, metadata, writes.", argv
    )
    output = args.json.resolve()
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _quiet_exit)
    started = time.perf_counter()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="capsule-bench-fusefs-") as scratch:
        # ServerProcess runs `python -m fusefs` in our directory: never benchmarks/, where
        # this script of the same name would be found first.
        os.chdir(scratch)
        try:
            with mounted(Path(scratch), sizes) as setup:
                jobs, collected = run(sizes, setup)
                setup.info["fusefs"]["server_after_run"] = server_usage(setup.server_pid)
        finally:
            os.chdir(cwd)
    elapsed = time.perf_counter() - started

    measures = with_targets(
        [job.summarize(flatten(samples)) for job, samples in zip(jobs, collected, strict=True)]
    )
    print_measures(
        f"capsule fusefs benchmark ({'quick' if args.quick else 'full'} run,"
        f" {sizes.rounds} interleaved rounds, {elapsed:.1f} s; {sizes.big_mib} MiB file)",
        measures,
    )
    for fs, reason in setup.skipped.items():
        print(f"  {fs}: {reason}")
    native = find_row(measures, "read-warm", "native")
    if native is None:
        raise RuntimeError("no native read figures")
    per_round = next(
        [gib_per_s(percentile(chunk, 50) / 1000) for chunk in samples]
        for job, samples in zip(jobs, collected, strict=True)
        if job.name == native.name
    )
    print(
        f"  native warm read p50 per round: {min(per_round):.2f} to {max(per_round):.2f} GiB/s"
        " (the spread shows how steady the machine was)"
    )
    readahead = {fs: info.get("read_ahead_kb") for fs, info in setup.info.items()}
    print(f"  mount readahead (read_ahead_kb): {readahead}")
    usage = setup.info["fusefs"]["server_after_run"]
    print(
        f"  fusefs server after the run ({sizes.volume_files:,} files in the large volume):"
        f" {usage['open_descriptors']} open descriptors, {usage['rss_mib']:.0f} MiB resident"
    )
    rows = summary(measures)
    print_summary(rows)

    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "pyfuse3", "trio"]),
        floor=native,
        measures=[],
        settings={"quick": args.quick, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    results = measures_json(measures)
    payload["floor"] = {
        "name": "native: the same operation on the backing directory",
        "rows": list(dict.fromkeys(row["floor"] for row in results if row["floor"])),
    }
    payload["results"] = results
    payload["summary"] = rows
    payload["mounts"] = setup.info
    if setup.skipped:
        payload["skipped"] = setup.skipped
    written = write_json(output, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
