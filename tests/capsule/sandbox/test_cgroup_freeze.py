"""Freezing a container's cgroup: a real busy process in a real group, judged from the host.

Each test runs once with the cgroup v1 freezer and once with cgroup v2's ``cgroup.freeze``,
where this machine offers them. Progress is read on the host: a counter the process writes to
a file, and its CPU time in /proc/PID/stat.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule._sandbox import _cgroup_detect
from capsule._sandbox._cgroup_detect import CgroupSupport
from capsule._sandbox._cgroup_files import CAPSULE_DIR, UNIFIED
from capsule._sandbox._cgroups import CgroupTree, ContainerCgroup
from capsule.errors import SandboxError

V1 = _cgroup_detect._detect(prefer=1)
V2 = _cgroup_detect._detect(prefer=2)
WAIT = 10.0
STILL = 0.2

#: a busy loop that writes how far it has counted into the file named by argv[1]
COUNTER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
n = 0
while True:
    n += 1
    if n % 1000 == 0:
        os.pwrite(fd, b"%020d" % n, 0)
"""


def _freezer_dir(support: CgroupSupport) -> Path | None:
    if not support.writable:
        return None
    return support.roots.get(UNIFIED if support.version == 2 else "freezer")


SUPPORTS = [
    pytest.param(
        support,
        id=f"v{version}",
        marks=pytest.mark.skipif(
            support.version != version or _freezer_dir(support) is None,
            reason=f"no writable cgroup v{version} freezer here: {support.describe()}",
        ),
    )
    for version, support in ((1, V1), (2, V2))
]


@pytest.fixture(params=SUPPORTS)
def tree(request: pytest.FixtureRequest) -> Iterator[CgroupTree]:
    support: CgroupSupport = request.param
    cg_tree = CgroupTree(support, f"test-{os.getpid()}-freeze-{secrets.token_hex(3)}")
    cg_tree.open()
    try:
        yield cg_tree
    finally:
        cg_tree.close()
        assert [d for d in cg_tree.run_dirs if d.exists()] == []


@pytest.fixture
def busy(tree: CgroupTree, tmp_path: Path) -> Iterator[tuple[ContainerCgroup, Busy]]:
    group = tree.create("busy", memory=None, pids=None, cpu=None)
    proc = Busy(tmp_path / "counter")
    try:
        group.attach(proc.pid)
        assert proc.pid in group.pids()
        proc.wait_progress()
        yield group, proc
    finally:
        proc.end()


class Busy:
    """The counting process, started outside the group, then moved in."""

    def __init__(self, counter: Path) -> None:
        self.counter = counter
        self.proc = subprocess.Popen([sys.executable, "-c", COUNTER, str(counter)])
        self.pid = self.proc.pid

    def count(self) -> int:
        text = self.counter.read_bytes() if self.counter.exists() else b""
        return int(text) if text.strip() else 0

    def cpu_ticks(self) -> int:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)

    def wait_progress(self) -> None:
        """Return once the counter has moved, twice (the process runs); fail after WAIT."""
        deadline = time.monotonic() + WAIT
        seen = self.count()
        moves = 0
        while moves < 2:
            assert time.monotonic() < deadline, f"process {self.pid} made no progress"
            time.sleep(0.01)
            now = self.count()
            if now > seen:
                moves, seen = moves + 1, now

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)


def host_state(group: ContainerCgroup) -> str:
    """The freezer state as the host reads it from the group's own files."""
    for path in group.paths:
        if (path / "freezer.state").exists():
            return (path / "freezer.state").read_text().strip()
        if (path / "cgroup.events").exists():
            lines = (path / "cgroup.events").read_text().splitlines()
            events = dict(line.split() for line in lines)
            return "FROZEN" if events["frozen"] == "1" else "THAWED"
    raise AssertionError(f"no freezer file in {group.paths}")


def test_a_frozen_group_makes_no_progress_and_runs_again_when_thawed(
    busy: tuple[ContainerCgroup, Busy],
) -> None:
    group, proc = busy
    assert not group.frozen
    assert host_state(group) == "THAWED"

    group.freeze(timeout=WAIT)
    assert group.frozen
    assert host_state(group) == "FROZEN"
    count, ticks = proc.count(), proc.cpu_ticks()
    time.sleep(STILL)
    assert (proc.count(), proc.cpu_ticks()) == (count, ticks)
    assert proc.proc.poll() is None  # frozen, not dead

    group.freeze(timeout=WAIT)  # freezing a frozen group is a no-op
    assert group.frozen

    group.thaw()
    assert not group.frozen
    assert host_state(group) == "THAWED"
    proc.wait_progress()
    assert proc.count() > count
    group.thaw()  # idempotent
    assert host_state(group) == "THAWED"


def test_kill_ends_a_frozen_group(busy: tuple[ContainerCgroup, Busy]) -> None:
    group, proc = busy
    group.freeze(timeout=WAIT)
    group.kill()
    assert proc.proc.wait(timeout=WAIT) == -9
    assert group.pids() == frozenset()
    assert all(path.is_dir() for path in group.paths)  # kill leaves the group; remove ends it


def test_kill_of_a_frozen_group_can_spare_a_helper(
    tree: CgroupTree, tmp_path: Path, busy: tuple[ContainerCgroup, Busy]
) -> None:
    group, proc = busy
    helper = Busy(tmp_path / "helper")
    try:
        group.attach(helper.pid)
        helper.wait_progress()
        group.freeze(timeout=WAIT)
        group.kill(spare=[helper.pid])
        assert proc.proc.wait(timeout=WAIT) == -9
        assert group.pids() == {helper.pid}
        assert not group.frozen  # thawed for the helper, which runs on
        helper.wait_progress()
    finally:
        helper.end()


def test_remove_of_a_frozen_group_leaves_nothing_behind(
    tree: CgroupTree, busy: tuple[ContainerCgroup, Busy]
) -> None:
    group, proc = busy
    group.freeze(timeout=WAIT)
    group.remove()
    assert proc.proc.wait(timeout=WAIT) == -9
    assert [p for p in group.paths if p.exists()] == []
    assert not group.frozen
    with pytest.raises(SandboxError, match="cannot thaw cgroup 'busy': it was removed"):
        group.thaw()
    with pytest.raises(SandboxError, match="cannot freeze cgroup 'busy': it was removed"):
        group.freeze(timeout=WAIT)
    tree.close()
    root = tree.support.roots[UNIFIED if tree.support.version == 2 else "freezer"]
    assert not (root / CAPSULE_DIR / tree.run_name).exists()


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_freeze_timeout_is_refused(tree: CgroupTree, timeout: float) -> None:
    group = tree.create("idle", memory=None, pids=None, cpu=None)
    with pytest.raises(SandboxError, match=r"cannot freeze cgroup 'idle': timeout=.* seconds, > 0"):
        group.freeze(timeout)
    assert not group.frozen


def test_without_cgroups_freeze_says_so() -> None:
    none = CgroupSupport(version=0, controllers=frozenset(), roots={}, writable=False)
    with CgroupTree(none, f"test-{os.getpid()}-nofreeze") as cg_tree:
        group = cg_tree.create("plain", memory=None, pids=None, cpu=None)
        assert not group.frozen
        with pytest.raises(SandboxError, match="cannot freeze cgroup 'plain': cgroups are not in"):
            group.freeze(timeout=1.0)
        with pytest.raises(SandboxError, match="cannot thaw cgroup 'plain': cgroups are not in"):
            group.thaw()


@pytest.mark.skipif(
    V1.version != 1 or not V1.writable, reason=f"no writable cgroup v1 here: {V1.describe()}"
)
def test_v1_without_the_freezer_hierarchy_names_it() -> None:
    roots = {k: v for k, v in V1.roots.items() if k != "freezer"}
    support = CgroupSupport(
        version=1, controllers=V1.controllers, roots=roots, writable=True, reason=""
    )
    with CgroupTree(support, f"test-{os.getpid()}-nofreezer-{secrets.token_hex(3)}") as cg_tree:
        group = cg_tree.create("plain", memory=None, pids=None, cpu=None)
        with pytest.raises(SandboxError, match="freezer hierarchy is not writable"):
            group.freeze(timeout=1.0)
