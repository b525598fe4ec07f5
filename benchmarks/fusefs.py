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
* listing of a directory of 1,000 entries (``os.listdir``);
* sequential write of 64 MiB (``--quick`` 16 MiB) in 128 KiB writes to a new file, then
  ``fsync`` and close (the previous sample's file is unlinked, untimed);
* create + write 4 KiB + close of a new file (the files are unlinked after each slice,
  untimed).
* over a large volume (1,000,000 files of 16 bytes, a thousand to a directory;
  ``--quick`` 20,000), native and fusefs only: a stat of each file, the first lookup
  of it, and an open + read + close of every tenth file after its descriptor was mostly
  evicted (``_fusefs_volume.py``); then the server's open descriptors and resident
  memory. Making the volume takes a while (about 10 s per million files).

All measures run interleaved, in rounds, so machine noise spreads over all of them.
Everything the run makes (temporary directory, bindfs process and mount, fusefs server
and mount) is removed on the way out, also on Ctrl-C, SIGTERM or an error. Run:
``python benchmarks/fusefs.py [--json PATH] [--quick]`` (as root for bindfs's
``allow_other`` and the readahead setting; otherwise those are left as they are).
The targets checked are the project's: fusefs bulk sequential read >= 70 % of native
when warm and >= 2.5 GiB/s cold; open + read + close <= 1.3x one FUSE round trip; stat
with caching <= 2x native.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final

# first: importing _common takes benchmarks/ off sys.path, where this helper lives
from _fusefs_volume import make_volume, server_usage, volume_jobs

# isort: split
from _common import (
    Job,
    LabelledTarget,
    Measure,
    Target,
    flatten,
    format_us,
    gc_paused,
    machine_info,
    parse_arguments,
    percentile,
    report_payload,
    run_interleaved,
    write_json,
)

import fusefs  # _common took benchmarks/ off sys.path: this is the package, not this script

NAME: Final = "fusefs"
KIB: Final = 1024
MIB: Final = 1024 * KIB
READ_CHUNK: Final = MIB
WRITE_CHUNK: Final = 128 * KIB
SMALL: Final = 4 * KIB
VIEW_PATH: Final = "/data"
FILESYSTEMS: Final = ("native", "bindfs", "fusefs")

WARM_TARGET: Final = 0.70  # fusefs warm read rate / native rate
COLD_TARGET_GIB_S: Final = 2.5
ROUND_TRIP_TARGET: Final = 1.3  # fusefs open+read+close p50 / fusefs round trip p50
STAT_TARGET: Final = 2.0  # fusefs cached stat p50 / native stat p50


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    big_mib: int  # the file read sequentially
    warm_reads: int  # passes over it per file system (plus one untimed per round)
    cold_reads: int
    small_files: int  # 4 KiB files, opened and stat'ed in turn
    small_reads: int
    stats: int
    misses: int
    warmup: int  # untimed calls per round before the per-call measures
    listing_entries: int
    listings: int
    write_mib: int
    writes: int
    creates: int
    volume_files: int  # the large volume of _fusefs_volume


FULL: Final = Sizes(
    rounds=10,
    big_mib=256,
    warm_reads=30,
    cold_reads=10,
    small_files=100,
    small_reads=3_000,
    stats=5_000,
    misses=3_000,
    warmup=20,
    listing_entries=1_000,
    listings=100,
    write_mib=64,
    writes=10,
    creates=2_000,
    volume_files=1_000_000,
)
QUICK: Final = Sizes(
    rounds=3,
    big_mib=64,
    warm_reads=6,
    cold_reads=3,
    small_files=100,
    small_reads=300,
    stats=600,
    misses=300,
    warmup=10,
    listing_entries=1_000,
    listings=15,
    write_mib=16,
    writes=3,
    creates=300,
    volume_files=20_000,
)


@dataclass(frozen=True)
class Group:
    """One operation, measured on each file system; its native row is its floor."""

    key: str
    title: str
    per_mib: bool = False  # bulk: samples are time per MiB moved


GROUPS: Final = (
    Group("read-warm", "sequential read, warm (the mount's page cache filled)", per_mib=True),
    Group(
        "read-cold",
        "sequential read, cold (the mount's page cache empty, the backing file cached)",
        per_mib=True,
    ),
    Group("open-read-close", "open + read 4 KiB + close"),
    Group("stat", "stat, attributes cached by the kernel"),
    Group("round-trip", "stat of a missing name: one FUSE round trip (lookup -> ENOENT)"),
    Group("listdir", "os.listdir of a directory of 1,000 entries"),
    Group("write", "sequential write, 128 KiB writes + fsync + close", per_mib=True),
    Group("create", "create + write 4 KiB + close of a new file"),
    Group("volume-stat", "stat of a file looked up for the first time, in the large volume"),
    Group("volume-read", "open + read + close of a file of the large volume, long looked up"),
)
GROUP: Final = {group.key: group for group in GROUPS}
DISK_ROW: Final = "native, from disk (its page cache dropped first)"


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run like Ctrl-C does: every mount and process is cleaned up."""
    raise SystemExit(128 + signum)


# -- the file systems ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """One file system's view of the backing directory."""

    fs: str
    root: Path

    @property
    def big(self) -> Path:
        return self.root / "big.bin"

    def small(self, index: int) -> Path:
        return self.root / "small" / f"f{index:04d}"

    @property
    def missing(self) -> Path:
        return self.root / "small" / "no-such-file"

    @property
    def listing(self) -> Path:
        return self.root / "listing"

    @property
    def volume(self) -> Path:
        return self.root / "volume"

    @property
    def writes(self) -> Path:
        return self.root / f"writes-{self.fs}"  # each file system writes in a folder of its own


def make_backing(backing: Path, sizes: Sizes) -> None:
    """The files every measure uses, written natively; the big one synced to disk."""
    block = os.urandom(MIB)
    fd = os.open(backing / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for _ in range(sizes.big_mib):
            os.write(fd, block)
        os.fsync(fd)  # clean pages: POSIX_FADV_DONTNEED can then drop them for the disk row
    finally:
        os.close(fd)
    (backing / "small").mkdir()
    for index in range(sizes.small_files):
        (backing / "small" / f"f{index:04d}").write_bytes(os.urandom(SMALL))
    (backing / "listing").mkdir()
    for index in range(sizes.listing_entries):
        (backing / "listing" / f"entry-{index:05d}").touch()
    for fs in FILESYSTEMS:
        (backing / f"writes-{fs}").mkdir()
    make_volume(backing / "volume", sizes.volume_files)


def bdi_of(mountpoint: Path) -> str | None:
    """The backing-device name of the FUSE mount at ``mountpoint`` (``major:minor``)."""
    connection = fusefs.connection_of(str(mountpoint))
    if connection is None:
        return None
    return f"{connection >> 20}:{connection & ((1 << 20) - 1)}"


def readahead_kb(mountpoint: Path) -> int | None:
    bdi = bdi_of(mountpoint)
    if bdi is None:
        return None
    try:
        return int(Path(f"/sys/class/bdi/{bdi}/read_ahead_kb").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


def set_readahead_kb(mountpoint: Path, value: int) -> bool:
    bdi = bdi_of(mountpoint)
    if bdi is None:
        return False
    try:
        Path(f"/sys/class/bdi/{bdi}/read_ahead_kb").write_text(str(value), encoding="ascii")
    except OSError:
        return False
    return True


class Bindfs:
    """bindfs in the foreground, in a session of its own, mounting ``source`` at ``mountpoint``."""

    def __init__(
        self, binary: str, source: Path, mountpoint: Path, cache_timeout: float, log: Path
    ) -> None:
        self.mountpoint = mountpoint
        self.log = log
        options = (
            f"auto_cache,entry_timeout={cache_timeout:g},attr_timeout={cache_timeout:g},"
            "negative_timeout=0,big_writes"
        )
        self.argv = [binary, "-f", "-o", options]
        if os.geteuid() != 0:
            self.argv.append("--no-allow-other")
        self.argv += [str(source), str(mountpoint)]
        with open(log, "wb") as stderr:  # a file, not a pipe nobody reads while it runs
            # A fixed argument list: bindfs as found on PATH and our own directories.
            self.process = subprocess.Popen(  # noqa: S603
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # Ctrl-C reaches us only, and we unmount it in order
            )
        try:
            self._wait_mounted()
        except BaseException:
            self.close()
            raise

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + 10.0
        while fusefs.connection_of(str(self.mountpoint)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                lines = self.log.read_text(errors="replace").strip().splitlines()
                raise RuntimeError(lines[-1] if lines else f"exit status {self.process.poll()}")
            time.sleep(0.01)

    def close(self) -> None:
        """Unmount (lazily), then wait for bindfs to end; SIGKILL after five seconds."""
        if fusefs.connection_of(str(self.mountpoint)) is not None:
            fusefs.unmount(str(self.mountpoint))
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def bindfs_version(binary: str) -> str | None:
    result = subprocess.run(  # noqa: S603 - bindfs as found on PATH, a fixed option
        [binary, "--version"], capture_output=True, check=False, timeout=10
    )
    text = result.stdout.decode(errors="replace").strip()
    return text or None


@dataclass
class Setup:
    """What the run mounted: the trees to measure, and what was skipped or tuned."""

    trees: dict[str, Tree]
    server_pid: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def mounted(scratch: Path, sizes: Sizes) -> Iterator[Setup]:
    """Make the backing directory, mount fusefs and bindfs over it; unmount on the way out."""
    backing = scratch / "backing"
    backing.mkdir()
    make_backing(backing, sizes)
    fusefs_point = scratch / "fusefs"
    bindfs_point = scratch / "bindfs"
    fusefs_point.mkdir()
    bindfs_point.mkdir()
    view = fusefs.ViewSpec(
        owner="bench",
        mounts=(
            fusefs.MountSpec(view_path=VIEW_PATH, kind=fusefs.MountKind.RW, backing=str(backing)),
        ),
        uid=os.geteuid(),
        gid=os.getegid(),
    )
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(fusefs.ServerProcess(view, str(fusefs_point)))
        if not server.probe(10.0):
            raise RuntimeError("the fusefs server does not answer requests")
        trees = {
            "native": Tree("native", backing),
            "fusefs": Tree("fusefs", fusefs_point / VIEW_PATH.lstrip("/")),
        }
        setup = Setup(trees, server.process.pid)
        setup.info["fusefs"] = {
            "cache_timeout_s": view.cache_timeout,
            "read_ahead_kb": _settled_readahead(fusefs_point),
        }
        binary = shutil.which("bindfs")
        if binary is None:
            setup.skipped["bindfs"] = (
                "bindfs is not installed (Debian: apt-get install bindfs): its rows are skipped"
            )
        else:
            try:
                log = scratch / "bindfs.log"
                bind = Bindfs(binary, backing, bindfs_point, view.cache_timeout, log)
            except (OSError, RuntimeError) as exc:
                setup.skipped["bindfs"] = f"bindfs cannot mount here ({exc}): its rows are skipped"
            else:
                stack.callback(bind.close)
                trees["bindfs"] = Tree("bindfs", bindfs_point)
                # A lookup is answered only after the kernel applied bindfs's INIT reply,
                # which sets the readahead: overwrite it only then.
                (bindfs_point / "small").stat()
                wanted = setup.info["fusefs"]["read_ahead_kb"]
                if wanted is not None:
                    set_readahead_kb(bindfs_point, wanted)
                setup.info["bindfs"] = {
                    "argv": bind.argv,
                    "version": bindfs_version(binary),
                    "read_ahead_kb": readahead_kb(bindfs_point),
                }
        setup.trees = {fs: trees[fs] for fs in FILESYSTEMS if fs in trees}
        check_trees(setup.trees, sizes)
        yield setup


def _settled_readahead(mountpoint: Path) -> int | None:
    """The mount's readahead once the server had time to raise it after its INIT reply
    (from the kernel's 128 KiB; it may also stay there)."""
    deadline = time.monotonic() + 0.5
    value = readahead_kb(mountpoint)
    while value is not None and value <= 128 and time.monotonic() < deadline:
        time.sleep(0.02)
        value = readahead_kb(mountpoint)
    return value


def check_trees(trees: dict[str, Tree], sizes: Sizes) -> None:
    """Every file system shows the same files: a wrong answer is an error, not a figure."""
    expected = (sizes.big_mib * MIB, trees["native"].small(0).read_bytes())
    for fs, tree in trees.items():
        found = (tree.big.stat().st_size, tree.small(0).read_bytes())
        if found != expected:
            raise RuntimeError(f"{fs}: the test files differ from the backing directory's")
        if len(os.listdir(tree.listing)) != sizes.listing_entries:
            raise RuntimeError(f"{fs}: the listing directory has the wrong number of entries")


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


def small_jobs(trees: dict[str, Tree], sizes: Sizes) -> list[Job]:
    """open + read + close, cached stat, a missing name, and a listing, on each file system."""
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

        def listing(path: Path = tree.listing) -> None:
            if len(os.listdir(path)) != sizes.listing_entries:
                raise RuntimeError(f"{path}: wrong number of entries")

        def timed(call: Callable[[], None], warmup: int) -> Callable[[int], list[int]]:
            return lambda count: _per_call(call, count, warmup)

        every_file = max(sizes.warmup, sizes.small_files)  # the slice starts with all cached
        jobs += [
            _job("open-read-close", fs, sizes.small_reads, timed(open_read_close, every_file)),
            _job("stat", fs, sizes.stats, timed(stat, every_file)),
            _job("round-trip", fs, sizes.misses, timed(missing, sizes.warmup)),
            _job("listdir", fs, sizes.listings, timed(listing, 1)),
        ]
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


# -- the report ---------------------------------------------------------------------------------


def gib_per_s(us_per_mib: float) -> float:
    return 1e6 / us_per_mib / 1024


def _find(measures: Sequence[Measure], group: str, fs: str) -> Measure | None:
    """The row of ``fs`` in ``group`` (each group has one per file system)."""
    return next((m for m in measures if m.extra["group"] == group and m.extra["fs"] == fs), None)


def with_targets(measures: list[Measure]) -> list[Measure]:
    """The fusefs rows that have a target in PERFORMANCE.md, with it; the rest unchanged."""
    native_warm = _find(measures, "read-warm", "native")
    native_stat = _find(measures, "stat", "native")
    round_trip = _find(measures, "round-trip", "fusefs")
    targets: dict[str, Target] = {}
    if native_warm is not None:
        targets["read-warm"] = LabelledTarget(
            native_warm.p50_us / WARM_TARGET, label=f">= {WARM_TARGET:.0%} of native rate"
        )
    targets["read-cold"] = LabelledTarget(
        1e6 / (COLD_TARGET_GIB_S * 1024), label=f">= {COLD_TARGET_GIB_S:g} GiB/s"
    )
    if round_trip is not None:
        targets["open-read-close"] = LabelledTarget(
            round_trip.p50_us * ROUND_TRIP_TARGET,
            label=f"<= {ROUND_TRIP_TARGET:g}x one round trip",
        )
    if native_stat is not None:
        targets["stat"] = LabelledTarget(
            native_stat.p50_us * STAT_TARGET, label=f"<= {STAT_TARGET:g}x native"
        )
    return [
        replace(m, target=targets.get(m.extra["group"]))
        if m.extra["fs"] == "fusefs" and m.extra["group"] in targets
        else m
        for m in measures
    ]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _floor_of(measures: Sequence[Measure], measure: Measure) -> Measure | None:
    """The native row a measure is compared with: for cold reads, native from the page cache."""
    group = measure.extra["group"]
    return _find(measures, "read-warm" if group == "read-cold" else group, "native")


def _ratios(measures: Sequence[Measure], measure: Measure) -> tuple[float | None, float | None]:
    floor = _floor_of(measures, measure)
    bindfs = _find(measures, measure.extra["group"], "bindfs")
    to_floor = None if floor is None else measure.p50_us / floor.p50_us
    to_bindfs = (
        None
        if bindfs is None or measure.extra["fs"] != "fusefs"
        else measure.p50_us / bindfs.p50_us
    )
    return to_floor, to_bindfs


def _table(
    title: str, header: Sequence[str], groups: Sequence[tuple[str, list[list[str]]]]
) -> None:
    rows = [list(header)] + [row for _, block in groups for row in block]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * max(len(line(header)), *(len(name) for name, _ in groups))
    print(title)
    print(rule)
    print(line(header))
    print(rule)
    for name, block in groups:
        print(name)
        for row in block:
            print(line(row))
    print(rule)


def print_measures(title: str, measures: Sequence[Measure]) -> None:
    header = (
        "measure",
        "p50 us",
        "p99 us",
        "p50/native",
        "fusefs/bindfs",
        "rate at p50",
        "target",
        "met",
    )
    groups: list[tuple[str, list[list[str]]]] = []
    for group in GROUPS:
        block: list[list[str]] = []
        for measure in (m for m in measures if m.extra["group"] == group.key):
            to_floor, to_bindfs = _ratios(measures, measure)
            met = measure.met
            block.append(
                [
                    f"  {measure.extra['row']}",
                    format_us(measure.p50_us),
                    format_us(measure.p99_us),
                    _ratio(to_floor),
                    _ratio(to_bindfs),
                    f"{gib_per_s(measure.p50_us):.2f} GiB/s" if group.per_mib else "-",
                    measure.target.describe() if measure.target else "-",
                    "-" if met is None else ("yes" if met else "NO"),
                ]
            )
        if block:
            unit = "time per MiB" if group.per_mib else "time per call"
            groups.append((f"{group.title} [{unit}]", block))
    _table(title, header, groups)


Figure = tuple[str, float] | None  # (text, value) of one file system against one target


def summary(measures: Sequence[Measure]) -> list[dict[str, Any]]:
    """The targets of PERFORMANCE.md against this run: fusefs, and bindfs beside it."""

    def find(group: str, fs: str) -> Measure | None:
        return _find(measures, group, fs)

    native_read, native_stat = find("read-warm", "native"), find("stat", "native")

    def warm(fs: str) -> Figure:
        row = find("read-warm", fs)
        if row is None or native_read is None:
            return None
        share = native_read.p50_us / row.p50_us
        return f"{gib_per_s(row.p50_us):.2f} GiB/s = {share:.1%} of native", share

    def cold(fs: str) -> Figure:
        row = find("read-cold", fs)
        return (
            None if row is None else (f"{gib_per_s(row.p50_us):.2f} GiB/s", gib_per_s(row.p50_us))
        )

    def ratio(row: Measure | None, floor: Measure | None) -> Figure:
        if row is None or floor is None:
            return None
        value = row.p50_us / floor.p50_us
        return f"{format_us(row.p50_us)} / {format_us(floor.p50_us)} us = {value:.2f}x", value

    disk = find("read-cold", "native")
    disk_text = "" if disk is None else f" (native from disk: {gib_per_s(disk.p50_us):.2f} GiB/s)"
    native_text = "" if native_read is None else f" ({gib_per_s(native_read.p50_us):.2f} GiB/s)"
    specs: list[tuple[str, Callable[[str], Figure], str, Callable[[float], bool]]] = [
        (
            f"sequential read, warm: rate, share of native{native_text}",
            warm,
            f">= {WARM_TARGET:.0%} of native",
            lambda value: value >= WARM_TARGET,
        ),
        (
            f"sequential read, cold: rate{disk_text}",
            cold,
            f">= {COLD_TARGET_GIB_S:g} GiB/s",
            lambda value: value >= COLD_TARGET_GIB_S,
        ),
        (
            "open + read + close / one FUSE round trip, p50",
            lambda fs: ratio(find("open-read-close", fs), find("round-trip", fs)),
            f"<= {ROUND_TRIP_TARGET:g}x",
            lambda value: value <= ROUND_TRIP_TARGET,
        ),
        (
            "stat, cached / native stat, p50",
            lambda fs: ratio(find("stat", fs), native_stat),
            f"<= {STAT_TARGET:g}x",
            lambda value: value <= STAT_TARGET,
        ),
    ]
    rows: list[dict[str, Any]] = []
    for name, figure, target, ok in specs:
        figures = {fs: figure(fs) for fs in ("fusefs", "bindfs")}
        ours = figures["fusefs"]
        rows.append(
            {
                "measure": name,
                **{
                    fs: None if got is None else {"text": got[0], "value": round(got[1], 4)}
                    for fs, got in figures.items()
                },
                "target": target,
                "met": None if ours is None else ok(ours[1]),
            }
        )
    return rows


def print_summary(rows: Sequence[dict[str, Any]]) -> None:
    header = ("target (PERFORMANCE.md)", "fusefs", "bindfs", "target", "met")

    def text(figure: dict[str, Any] | None) -> str:
        return "skipped" if figure is None else str(figure["text"])

    cells = [
        (
            r["measure"],
            text(r["fusefs"]),
            text(r["bindfs"]),
            r["target"],
            "-" if r["met"] is None else ("yes" if r["met"] else "NOT met"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()

    rule = "-" * len(line(header))
    print()
    print("fusefs against the targets (bindfs beside it for comparison; not a target)")
    print(rule)
    print(line(header))
    print(rule)
    for row in cells:
        print(line(row))
    print(rule)


def measures_json(measures: Sequence[Measure]) -> list[dict[str, Any]]:
    """Each row as the other benchmarks write it; its floor is its own operation's native row."""
    entries = []
    for measure in measures:
        to_floor, to_bindfs = _ratios(measures, measure)
        floor = _floor_of(measures, measure)
        group = GROUP[measure.extra["group"]]
        entry: dict[str, Any] = {
            "name": measure.name,
            "p50_us": round(measure.p50_us, 4),
            "p99_us": round(measure.p99_us, 4),
            "floor": None if floor is None else floor.name,
            "ratio_to_floor_p50": None if to_floor is None else round(to_floor, 5),
            "ratio_to_bindfs_p50": None if to_bindfs is None else round(to_bindfs, 5),
            "target": measure.target.describe() if measure.target else None,
            "target_p50_us": round(measure.target.p50_us, 4) if measure.target else None,
            "met": measure.met,
            "min_us": round(measure.min_us, 4),
            "mean_us": round(measure.mean_us, 4),
            "samples": measure.samples,
            "calls_per_sample": measure.calls_per_sample,
            **measure.extra,
        }
        if group.per_mib:
            entry["gib_per_s_p50"] = round(gib_per_s(measure.p50_us), 4)
        entries.append(entry)
    return entries


# -- the run ------------------------------------------------------------------------------------


def run(sizes: Sizes, setup: Setup) -> tuple[list[Job], list[list[list[float]]]]:
    buffer = mmap.mmap(-1, READ_CHUNK)  # page-aligned, reused by every read
    jobs = [
        *read_jobs(setup.trees, sizes, buffer),
        *small_jobs(setup.trees, sizes),
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
    native = _find(measures, "read-warm", "native")
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
