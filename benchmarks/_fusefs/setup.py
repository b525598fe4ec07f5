"""The file systems benchmarks/fusefs.py measures: the backing directory it makes, bindfs
and a fusefs view mounted over it, and the sizes of a full and a ``--quick`` run.

Must not time anything: fusefs.py does. Everything mounted or started here is unmounted
or stopped by :func:`mounted` on the way out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import fusefs  # _common took benchmarks/ off sys.path: the package, not the script
from _fusefs.volume import make_volume

KIB: Final = 1024
MIB: Final = 1024 * KIB
READ_CHUNK: Final = MIB
WRITE_CHUNK: Final = 128 * KIB
SMALL: Final = 4 * KIB
VIEW_PATH: Final = "/data"
FILESYSTEMS: Final = ("native", "bindfs", "fusefs")


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
    volume_files: int  # the large volume of _fusefs/volume.py


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


class Served:
    """A FUSE server started by ``argv`` in the foreground, in a session of its own,
    mounting at ``mountpoint``; its stderr goes to ``log``."""

    def __init__(self, argv: list[str], mountpoint: Path, log: Path) -> None:
        self.argv = argv
        self.mountpoint = mountpoint
        self.log = log
        with open(log, "wb") as stderr:  # a file, not a pipe nobody reads while it runs
            # A fixed argument list: a program of ours or as found on PATH, our directories.
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
        """Unmount (lazily), then wait for the server to end; SIGKILL after five seconds."""
        if fusefs.connection_of(str(self.mountpoint)) is not None:
            fusefs.unmount(str(self.mountpoint))
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Bindfs(Served):
    """bindfs mounting ``source`` at ``mountpoint``, caching as a view does."""

    def __init__(
        self, binary: str, source: Path, mountpoint: Path, cache_timeout: float, log: Path
    ) -> None:
        options = (
            f"auto_cache,entry_timeout={cache_timeout:g},attr_timeout={cache_timeout:g},"
            "negative_timeout=0,big_writes"
        )
        argv = [binary, "-f", "-o", options]
        if os.geteuid() != 0:
            argv.append("--no-allow-other")
        super().__init__([*argv, str(source), str(mountpoint)], mountpoint, log)


class Floor(Served):
    """``floor.py``: a pyfuse3 file system whose ``listing`` directory holds the entries
    of the backing one, listed with no work per entry but ``readdir_reply``."""

    def __init__(self, mountpoint: Path, entries: int, cache_timeout: float, log: Path) -> None:
        script = Path(__file__).with_name("floor.py")
        argv = [sys.executable, str(script), str(mountpoint), str(entries), f"{cache_timeout:g}"]
        super().__init__(argv, mountpoint, log)


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
    floor_listing: Path | None = None  # the listing directory of the pyfuse3 floor
    skipped: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def mounted(scratch: Path, sizes: Sizes) -> Iterator[Setup]:
    """Make the backing directory, mount fusefs and bindfs over it and the pyfuse3 floor of
    a listing beside them; unmount on the way out."""
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
        floor_point = scratch / "floor"
        floor_point.mkdir()
        try:
            floor = Floor(floor_point, sizes.listing_entries, view.cache_timeout, scratch / "f.log")
        except (OSError, RuntimeError) as exc:
            setup.skipped["floor"] = f"the pyfuse3 floor cannot mount ({exc}): its row is skipped"
        else:
            stack.callback(floor.close)
            setup.floor_listing = floor_point / "listing"
        setup.trees = {fs: trees[fs] for fs in FILESYSTEMS if fs in trees}
        check_trees(setup.trees, sizes)
        listed = None if setup.floor_listing is None else sorted(os.listdir(setup.floor_listing))
        if listed is not None and listed != sorted(os.listdir(backing / "listing")):
            raise RuntimeError("the pyfuse3 floor lists other names than the backing directory")
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
