"""cgroup groups against the running kernel: limits, OOM, pids, CPU, killing and stale cleanup.

No mocks: every test creates real groups under ``capsule/`` with a run name of its own, forks
children that join them, always reaps those children and always closes its tree. A module
fixture checks at the end that no group of this run and no child process is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import secrets
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capsule._sandbox import _cgroup_detect, _cgroup_stale
from capsule._sandbox._cgroup_detect import CgroupSupport, detect
from capsule._sandbox._cgroup_files import CAPSULE_DIR, UNIFIED, run_name_for, write_value
from capsule._sandbox._cgroup_stale import cleanup_stale
from capsule._sandbox._cgroups import CgroupTree, ContainerCgroup
from capsule.errors import SandboxError

MiB = 1 << 20
CHILD_TIMEOUT = 10.0
SUPPORT = detect()
V2 = _cgroup_detect._detect(prefer=2)
_COUNTER = itertools.count()
#: every run name a test here created, for the final check
CREATED: set[str] = set()

needs_cgroups = pytest.mark.skipif(
    not SUPPORT.writable, reason=f"cannot create cgroups here: {SUPPORT.describe()}"
)
needs_v2 = pytest.mark.skipif(
    V2.version != 2 or not V2.writable,
    reason=f"no writable cgroup v2 hierarchy here: {V2.describe()}",
)


def _v1_mount_point(controller: str) -> Path | None:
    text = Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        head, _, tail = line.partition(" - ")
        fields = tail.split()
        if fields and fields[0] == "cgroup" and controller in fields[2].split(","):
            return Path(head.split()[4])
    return None


def unique_run_name() -> str:
    name = f"test-{os.getpid()}-{next(_COUNTER)}-{secrets.token_hex(3)}"
    CREATED.add(name)
    return name


def all_roots() -> set[Path]:
    return set(SUPPORT.roots.values()) | set(V2.roots.values())


def live_children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    yield
    leftovers = [
        str(root / CAPSULE_DIR / name)
        for root in all_roots()
        for name in CREATED
        if (root / CAPSULE_DIR / name).exists()
    ]
    assert leftovers == []
    ours = run_name_for(os.getpid())
    assert not any((root / CAPSULE_DIR / ours).exists() for root in all_roots())
    assert live_children() == []


@pytest.fixture
def tree() -> Iterator[CgroupTree]:
    cg_tree = CgroupTree(SUPPORT, unique_run_name())
    cg_tree.open()
    try:
        yield cg_tree
    finally:
        cg_tree.close()
        assert [d for d in cg_tree.run_dirs if d.exists()] == []


# --------------------------------------------------------------------------------------------
# child processes


def reap(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """Wait for ``pid``; SIGKILL it when it overstays. Returns the wait status."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.005)


def spawn(procs_files: tuple[str, ...], body: Callable[[int], int]) -> tuple[int, int]:
    """Fork a child that joins the group through ``procs_files``, then runs ``body(write_fd)``.

    The child writes b"j" once it has joined. Returns (pid, read end of its pipe).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.close(read_fd)
            for path in procs_files:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
            os.write(write_fd, b"j")
            code = body(write_fd)
        except BaseException:  # any failure in the child becomes its exit code
            code = 71
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def read_exactly(fd: int, size: int, timeout: float = CHILD_TIMEOUT) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def join(procs_files: tuple[str, ...], body: Callable[[int], int]) -> tuple[int, int]:
    pid, fd = spawn(procs_files, body)
    if read_exactly(fd, 1) != b"j":
        os.close(fd)
        status = reap(pid, 0)
        pytest.fail(f"the child could not join its cgroup (wait status {status:#x})")
    return pid, fd


def sleeper(_: int) -> int:
    time.sleep(CHILD_TIMEOUT)
    return 0


def read(path: Path) -> str:
    return path.read_text().strip()


def group_dir(group: ContainerCgroup, controller: str) -> Path:
    root = SUPPORT.roots[controller]
    (path,) = [p for p in group.paths if p.is_relative_to(root / CAPSULE_DIR)]
    return path


# --------------------------------------------------------------------------------------------
# detection and names


@pytest.mark.skipif(_v1_mount_point("memory") is None, reason="no cgroup v1 memory hierarchy here")
def test_detect_reports_v1_with_memory_pids_cpu() -> None:
    assert SUPPORT.version == 1
    assert frozenset({"memory", "pids", "cpu"}) == SUPPORT.controllers
    assert SUPPORT.writable
    assert SUPPORT.reason == ""
    assert SUPPORT.describe() == "cgroup v1: memory, pids, cpu"
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            own[name] = path
    for controller in ("memory", "pids", "cpu"):
        root = SUPPORT.roots[controller]
        mount_point = _v1_mount_point(controller)
        assert mount_point is not None
        assert root == mount_point / own[controller].lstrip("/")
        assert (root / "cgroup.procs").exists()


def test_run_name_is_pid_and_starttime() -> None:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    assert run_name_for(os.getpid()) == f"{os.getpid()}-{fields[19]}"
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid)
    with pytest.raises(ProcessLookupError):
        run_name_for(pid)


@pytest.mark.parametrize(
    "name", ["", "A", "Feature", "-x", ".x", "_x", "a/b", "../x", "a b", "x" * 129, "é", "a\n"]
)
def test_bad_names_raise(name: str) -> None:
    offline = CgroupSupport(version=0, controllers=frozenset(), roots={}, writable=False)
    cg_tree = CgroupTree(offline, "test-names")
    with pytest.raises(SandboxError, match="invalid cgroup name"):
        cg_tree.create(name, memory=None, pids=None, cpu=None)
    with pytest.raises(SandboxError, match="invalid cgroup run name"):
        CgroupTree(offline, name)


@pytest.mark.parametrize(
    ("memory", "pids", "cpu"), [(0, None, None), (None, -1, None), (None, None, 0.0)]
)
def test_bad_limits_raise(memory: int | None, pids: int | None, cpu: float | None) -> None:
    offline = CgroupSupport(version=0, controllers=frozenset(), roots={}, writable=False)
    with pytest.raises(SandboxError, match="invalid cgroup limits"):
        CgroupTree(offline, "test-limits").create("x", memory=memory, pids=pids, cpu=cpu)


def test_without_cgroups_every_limit_is_missing() -> None:
    offline = CgroupSupport(
        version=0, controllers=frozenset(), roots={}, writable=False, reason="none here"
    )
    assert offline.describe() == "no cgroups: none here"
    with CgroupTree(offline, "test-offline") as cg_tree:
        group = cg_tree.create("feature", memory=MiB, pids=4, cpu=None)
        assert group.missing == frozenset({"memory", "pids"})
        assert group.procs_files == ()
        assert group.stats().memory_current is None
        group.kill()
        group.remove()


# --------------------------------------------------------------------------------------------
# limits


@needs_cgroups
def test_create_writes_the_limits(tree: CgroupTree) -> None:
    group = tree.create("limits", memory=64 * MiB, pids=8, cpu=0.25)
    assert group.missing == frozenset()
    assert len(group.procs_files) == len(set(SUPPORT.roots.values()))
    assert all(Path(p).exists() for p in group.procs_files)
    mem, pids, cpu = (group_dir(group, c) for c in ("memory", "pids", "cpu"))
    assert int(read(mem / "memory.limit_in_bytes")) == 64 * MiB
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert int(read(mem / "memory.memsw.limit_in_bytes")) == 64 * MiB
    if (mem / "memory.swappiness").exists():
        assert read(mem / "memory.swappiness") == "0"
    assert read(pids / "pids.max") == "8"
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "cpu.cfs_quota_us") == "25000"
    stats = group.stats()
    assert stats.memory_limit == 64 * MiB
    assert stats.pids_limit == 8
    assert stats.pids_current == 0
    assert stats.oom_kills == 0

    tiny = tree.create("tiny-cpu", memory=None, pids=None, cpu=0.0001)
    assert read(group_dir(tiny, "cpu") / "cpu.cfs_quota_us") == "1000"
    unlimited = tree.create("unlimited", memory=None, pids=None, cpu=None).stats()
    assert unlimited.memory_limit is None
    assert unlimited.pids_limit is None

    with pytest.raises(SandboxError, match="exists already"):
        tree.create("limits", memory=None, pids=None, cpu=None)


@needs_cgroups
def test_memory_limit_oom_kills_the_child(tree: CgroupTree) -> None:
    group = tree.create("oom", memory=64 * MiB, pids=None, cpu=None)

    def hog(_: int) -> int:
        chunks = [b"x" * MiB for _ in range(512)]  # bytes multiplication touches every page
        return len(chunks) & 0  # not OOM-killed: the parent's assertion fails

    pid, fd = join(group.procs_files, hog)
    os.close(fd)
    status = reap(pid)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    stats = group.stats()
    assert stats.oom_kills >= 1
    assert stats.memory_peak is not None
    assert stats.memory_peak <= 64 * MiB


@needs_cgroups
def test_pids_limit_stops_forking(tree: CgroupTree) -> None:
    group = tree.create("pids", memory=None, pids=8, cpu=None)

    def forker(report: int) -> int:
        gate_r, gate_w = os.pipe()
        children: list[int] = []
        refused = False
        for _ in range(20):
            try:
                child = os.fork()
            except BlockingIOError:
                refused = True
                break
            if child == 0:
                os.close(gate_w)
                os.read(gate_r, 1)  # returns at EOF, when the parent closes its end
                os._exit(0)
            children.append(child)
        os.close(gate_w)
        clean = all(os.waitpid(c, 0)[1] == 0 for c in children)
        os.write(report, f"{len(children)} {int(refused)}\n".encode())
        return 0 if clean else 1

    pid, fd = join(group.procs_files, forker)
    try:
        report = read_exactly(fd, 4).decode()
    finally:
        os.close(fd)
    status = reap(pid)
    forks, refused = (int(x) for x in report.split())
    assert refused == 1
    assert 1 <= forks < 8
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
    assert group.stats().pids_limit == 8


@needs_cgroups
def test_cpu_limit_throttles_a_busy_child(tree: CgroupTree) -> None:
    group = tree.create("cpu", memory=None, pids=None, cpu=0.1)
    wall = 0.5

    def spin(_: int) -> int:
        end = time.monotonic() + wall
        while time.monotonic() < end:
            pass
        return 0

    pid, fd = join(group.procs_files, spin)
    os.close(fd)
    status = reap(pid)
    assert os.WIFEXITED(status)
    stats = group.stats()
    assert stats.cpu_throttled is not None
    assert stats.cpu_throttled > 0
    if stats.cpu_usage_ns is not None:
        assert stats.cpu_usage_ns < 0.5 * wall * 1e9


# --------------------------------------------------------------------------------------------
# killing and removing

_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Make this process the subreaper of its descendants; reap the pids the test lists."""
    _set_subreaper(True)
    pids: list[int] = []
    try:
        yield pids
    finally:
        try:
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    status = reap(pid, 2.0)
                    assert os.WIFSIGNALED(status)
        finally:
            _set_subreaper(False)


def read_family(fd: int) -> list[int]:
    try:
        raw = read_exactly(fd, 20).decode()
    finally:
        os.close(fd)
    return [int(raw[:10]), int(raw[10:])]


def wait_exited(pids: list[int], timeout: float = 2.0) -> None:
    """Assert each process has exited (zombie or reaped), with a pidfd: immune to pid reuse."""
    pidfds = [os.pidfd_open(p) for p in pids]
    try:
        for pidfd in pidfds:  # a pidfd turns readable once its process has exited
            assert select.select([pidfd], [], [], timeout)[0] == [pidfd]
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _family(report: int) -> int:
    """Fork a grandchild that forks a great-grandchild; all report their pids, then sleep."""
    if os.fork() == 0:
        if os.fork() == 0:
            os.write(report, f"{os.getpid():>10}".encode())
            time.sleep(CHILD_TIMEOUT)
            os._exit(0)
        os.write(report, f"{os.getpid():>10}".encode())
        time.sleep(CHILD_TIMEOUT)
        os._exit(0)
    time.sleep(CHILD_TIMEOUT)
    return 0


@needs_cgroups
def test_kill_reaches_grandchildren(tree: CgroupTree, orphans: list[int]) -> None:
    group = tree.create("kill", memory=None, pids=None, cpu=None)
    pid, fd = join(group.procs_files, _family)
    try:
        descendants = read_family(fd)
        orphans += descendants
        assert group.pids() == {pid, *descendants}
        assert group.stats().pids_current == 3
        started = time.monotonic()
        group.kill()
        assert time.monotonic() - started < 2.0
        assert group.pids() == frozenset()
        wait_exited(descendants)
    finally:
        status = reap(pid, 2.0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL


def _bomb(_: int) -> int:
    """Every process forks for ever; only the pids limit bounds them."""
    while True:
        with contextlib.suppress(BlockingIOError):
            os.fork()


def reap_all_children(timeout: float = CHILD_TIMEOUT) -> int:
    """Reap every child (orphans included, as subreaper) until none is left; return how many."""
    reaped = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
        else:
            time.sleep(0.005)
    pytest.fail(f"children still alive after {timeout} s: {live_children()}")


@needs_cgroups
def test_kill_stops_a_fork_bomb(tree: CgroupTree, orphans: list[int]) -> None:
    group = tree.create("bomb", memory=None, pids=32, cpu=0.5)
    pid, fd = join(group.procs_files, _bomb)
    os.close(fd)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while (group.stats().pids_current or 0) < 32 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group.stats().pids_current == 32
    started = time.monotonic()
    group.kill()
    assert time.monotonic() - started < 2.0
    assert group.pids() == frozenset()
    assert reap_all_children() == 32
    assert pid not in live_children()


@needs_cgroups
def test_remove_kills_and_leaves_no_directory(tree: CgroupTree) -> None:
    group = tree.create("remove", memory=32 * MiB, pids=16, cpu=0.5)
    pid = os.fork()
    if pid == 0:
        time.sleep(CHILD_TIMEOUT)
        os._exit(0)
    try:
        group.attach(pid)
        assert group.pids() == {pid}
        group.remove()
        assert [p for p in group.paths if p.exists()] == []
    finally:
        status = reap(pid)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    group.remove()  # idempotent
    group.kill()
    assert group.stats().memory_current is None
    again = tree.create("remove", memory=None, pids=None, cpu=None)  # the name is free again
    assert all(p.exists() for p in again.paths)


@needs_cgroups
def test_close_removes_groups_with_processes_and_is_idempotent() -> None:
    cg_tree = CgroupTree(SUPPORT, unique_run_name())
    pids: list[int] = []
    try:
        cg_tree.open()
        cg_tree.open()
        for name in ("one", "two"):
            group = cg_tree.create(name, memory=None, pids=None, cpu=None)
            pid, fd = join(group.procs_files, sleeper)
            os.close(fd)
            pids.append(pid)
        (cg_tree.run_dirs[0] / "one" / "nested").mkdir()  # a group the container made itself
        cg_tree.close()
        assert [d for d in cg_tree.run_dirs if d.exists()] == []
        cg_tree.close()
    finally:
        cg_tree.close()
        statuses = [reap(pid) for pid in pids]
    assert all(os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGKILL for s in statuses)


@needs_cgroups
def test_attach_to_a_missing_process_raises(tree: CgroupTree) -> None:
    group = tree.create("attach", memory=None, pids=None, cpu=None)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid)
    with pytest.raises(SandboxError, match=r"cgroup\.procs failed with ESRCH"):
        group.attach(pid)


@needs_cgroups
def test_create_reports_the_file_and_errno() -> None:
    cg_tree = CgroupTree(SUPPORT, unique_run_name())
    try:
        cg_tree.open()
        with pytest.raises(SandboxError) as caught:
            cg_tree.create("huge", memory=None, pids=1 << 40, cpu=None)
        message = str(caught.value)
        assert "pids.max" in message
        assert "EINVAL" in message
        assert "fix:" in message
        assert str(SUPPORT.roots["pids"]) in message
        assert not (cg_tree.run_dirs[0] / "huge").exists()  # a failed create leaves nothing
    finally:
        cg_tree.close()


# --------------------------------------------------------------------------------------------
# stale runs


@needs_cgroups
def test_cleanup_stale_removes_dead_runs_and_keeps_live_ones() -> None:
    gate_r, gate_w = os.pipe()
    dead = os.fork()
    if dead == 0:
        os.close(gate_w)
        os.read(gate_r, 1)
        os._exit(0)
    os.close(gate_r)
    dead_name = run_name_for(dead)
    os.close(gate_w)
    reap(dead)
    own_pid, own_start = run_name_for(os.getpid()).split("-")
    reused_name = f"{own_pid}-{int(own_start) + 1}"  # our pid, but another process's start
    CREATED.update({dead_name, reused_name})

    stale = CgroupTree(SUPPORT, dead_name)
    reused = CgroupTree(SUPPORT, reused_name)
    live = CgroupTree(SUPPORT, run_name_for(os.getpid()))
    other = CgroupTree(SUPPORT, unique_run_name())  # not <pid>-<starttime>: never touched
    inside = None
    try:
        for cg_tree in (stale, reused, live, other):
            cg_tree.open()
        group = stale.create("feature", memory=16 * MiB, pids=8, cpu=None)
        for path in group.paths:
            (path / "inner").mkdir()
        inside, fd = join(tuple(str(p / "inner" / "cgroup.procs") for p in group.paths), sleeper)
        os.close(fd)
        live_group = live.create("feature", memory=None, pids=None, cpu=None)

        removed = cleanup_stale(SUPPORT)

        assert set(map(str, stale.run_dirs + reused.run_dirs)) <= set(removed)
        assert not any(d.exists() for d in stale.run_dirs + reused.run_dirs)
        status = reap(inside)
        inside = None
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGKILL
        assert all(d.exists() for d in live.run_dirs + other.run_dirs)
        assert all(p.exists() for p in live_group.paths)
        assert not any(str(d) in removed for d in live.run_dirs + other.run_dirs)
        for path in map(Path, removed):
            assert path.parent.name == CAPSULE_DIR
            assert _cgroup_stale._RUN_RE.match(path.name)
    finally:
        if inside is not None:
            reap(inside, 0)
        for cg_tree in (stale, reused, live, other):
            cg_tree.close()


# --------------------------------------------------------------------------------------------
# cgroup v2 (the unified hierarchy; here without the limit controllers, bound to v1)


@needs_v2
def test_v2_groups_join_measure_kill_and_remove(orphans: list[int]) -> None:
    assert V2.writable
    assert UNIFIED in V2.roots
    assert V2.describe().startswith("cgroup v2: ")
    with CgroupTree(V2, unique_run_name()) as cg_tree:
        group = cg_tree.create("feature", memory=64 * MiB, pids=8, cpu=0.5)
        assert group.missing == frozenset({"memory", "pids", "cpu"} - V2.controllers)
        assert len(group.procs_files) == 1
        pid, fd = join(group.procs_files, _family)
        try:
            descendants = read_family(fd)
            orphans += descendants
            assert group.pids() == {pid, *descendants}
            assert str(pid) in read(Path(group.procs_files[0])).split()
            stats = group.stats()
            assert stats.cpu_usage_ns is not None
            assert stats.cpu_usage_ns > 0
            group.remove()
            assert not any(p.exists() for p in group.paths)
            wait_exited(descendants)
        finally:
            status = reap(pid, 2.0)
        assert os.WIFSIGNALED(status)
    assert not any(d.exists() for d in cg_tree.run_dirs)


def _v2_offers(controller: str) -> bool:
    root = V2.roots.get(UNIFIED)
    return root is not None and controller in read(root / "cgroup.controllers").split()


def _subtree_control(group: Path, change: str) -> None:
    with contextlib.suppress(OSError):
        write_value(group / "cgroup.subtree_control", change)


@needs_v2
@pytest.mark.skipif(not _v2_offers("hugetlb"), reason="no v2 domain controller to delegate here")
def test_v2_no_internal_processes_puts_capsule_in_the_parent() -> None:
    """A cgroup holding processes cannot give domain controllers to children: use its parent.

    Played with hugetlb, the domain controller this machine's v2 hierarchy offers: the
    "supervisor" is a child moved into ``<top>/inner``.
    """
    root = V2.roots[UNIFIED]
    capsule = root / CAPSULE_DIR
    name = unique_run_name()
    top = capsule / name
    inner = top / "inner"
    created = not capsule.exists()  # the last run to leave removes the shared directory
    capsule.mkdir(exist_ok=True)
    enabled_before = {
        g: "hugetlb" in read(g / "cgroup.subtree_control").split() for g in (root, capsule)
    }
    pid = None
    try:
        for group in (root, capsule):
            _subtree_control(group, "+hugetlb")
        top.mkdir()
        _subtree_control(top, "+hugetlb")
        inner.mkdir()
        pid, fd = join((str(inner / "cgroup.procs"),), sleeper)
        os.close(fd)
        with pytest.raises(OSError, match="Device or resource busy") as caught:
            write_value(inner / "cgroup.subtree_control", "+hugetlb")
        assert caught.value.errno == errno.EBUSY

        found = _cgroup_detect._detect_v2(root, inner, frozenset({"hugetlb"}))

        assert found.version == 2
        assert found.controllers == frozenset({"hugetlb"})
        assert found.roots["hugetlb"] == top
        assert found.reason == ""
        assert "hugetlb" in read(top / CAPSULE_DIR / "cgroup.subtree_control").split()
        assert not (inner / CAPSULE_DIR).exists()
        with CgroupTree(found, "run") as cg_tree:
            feature = cg_tree.create("feature", memory=None, pids=None, cpu=None)
            assert feature.paths == (top / CAPSULE_DIR / "run" / "feature",)
            assert "hugetlb" in read(feature.paths[0] / "cgroup.controllers").split()

        # no usable parent (here: the mount's root is the busy cgroup itself): the groups go
        # below it, without controllers, and the busy cgroup is left exactly as it was
        alone = _cgroup_detect._detect_v2(inner, inner, frozenset({"hugetlb"}))
        assert alone.version == 2
        assert alone.writable
        assert alone.controllers == frozenset()
        assert alone.roots == {UNIFIED: inner}
        assert "holds processes" in alone.reason
        assert "Delegate=yes" in alone.reason
        assert read(inner / "cgroup.subtree_control") == ""
        assert read(inner / "cgroup.type") == "domain"
    finally:
        left: list[str] = []
        try:
            if pid is not None:
                write_value(inner / "cgroup.kill", "1")
                reap(pid)
            for group in (top / CAPSULE_DIR, inner / CAPSULE_DIR, inner, top):
                try:
                    group.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    left.append(f"{group}: {exc}")
        finally:
            for group in (capsule, root):  # put the shared directories back as they were
                if not enabled_before[group]:
                    _subtree_control(group, "-hugetlb")
            if created:
                with contextlib.suppress(OSError):
                    capsule.rmdir()
        assert left == []
