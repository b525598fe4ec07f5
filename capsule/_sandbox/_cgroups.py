"""Per-container resource limits through cgroups: the run's tree and each container's group.

File operations only: decides no policy, starts no thread, never imports the rest of capsule
except capsule.errors and the cgroup modules beside it, and never touches a cgroup outside the
``capsule/`` directories it owns. Those modules hold the pieces: :mod:`._cgroup_detect` (what
this process can use), :mod:`._cgroup_limits` (writing limits), :mod:`._cgroup_kill` (killing
and removing), :mod:`._cgroup_stale` (runs of supervisors that are gone) and
:mod:`._cgroup_files` (reading and writing one cgroup file).

Layout. Under each *root* (see :class:`CgroupSupport`) the runtime keeps one shared ``capsule/``
directory, one run directory per supervisor process named ``<pid>-<starttime>`` (so a reused pid
never matches a dead supervisor's directory) and one group per container::

    <root>/capsule/<run_name>/<container>/

cgroup v1 has one hierarchy per mounted controller set, so a container is one directory in each
hierarchy and a process joins by writing its pid into every ``cgroup.procs`` listed in
:attr:`ContainerCgroup.procs_files`. Besides ``memory``, ``pids`` and ``cpu``, a separately
mounted ``cpuacct`` hierarchy (CPU time) and the ``freezer`` hierarchy (race-free killing,
:meth:`ContainerCgroup.freeze`) are used when writable. cgroup v2 has one hierarchy; its "no
internal processes" rule means the groups cannot live next to the supervisor's own processes, so
``capsule/`` is created in the parent of the supervisor's cgroup when that cgroup holds
processes (unless it is the root), and the controllers are enabled in ``cgroup.subtree_control``
on the way down.

Every function is synchronous and meant for a worker thread: nothing here blocks for longer than
the short, bounded waits of :meth:`ContainerCgroup.kill` and :meth:`ContainerCgroup.remove`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final, Literal

from capsule._sandbox._cgroup_detect import CgroupSupport, enable_controllers
from capsule._sandbox._cgroup_files import (
    CAPSULE_DIR,
    UNIFIED,
    cgroup_error,
    check_name,
    read_int,
    read_keyed,
    write_value,
)
from capsule._sandbox._cgroup_kill import (
    freezer_file,
    freezer_state,
    kill_groups,
    member_pids,
    remove_groups,
    set_frozen,
    wait_frozen,
)
from capsule._sandbox._cgroup_limits import check_limits, limit_v1, limit_v2
from capsule.errors import InternalError, SandboxError

__all__ = [
    "CgroupStats",
    "CgroupTree",
    "ContainerCgroup",
]

#: v1 reports "no memory limit" as the page counter maximum; anything this large is unlimited.
_V1_UNLIMITED: Final = 1 << 62


@dataclass(frozen=True)
class CgroupStats:
    """A snapshot of one container's counters; ``None`` where the controller is unavailable.

    Limits of "unlimited" read as ``None``. ``oom_kills`` counts processes the kernel's OOM
    killer killed in the group; ``cpu_throttled`` counts CFS periods in which it was throttled.
    """

    memory_current: int | None
    memory_peak: int | None
    memory_limit: int | None
    oom_kills: int
    pids_current: int | None
    pids_limit: int | None
    cpu_usage_ns: int | None
    cpu_throttled: int | None


class ContainerCgroup:
    """One container's group, in every hierarchy in use.

    Created by :meth:`CgroupTree.create`. ``missing`` names the requested limits that could not
    be applied because their controller is unavailable.
    """

    def __init__(
        self,
        name: str,
        *,
        version: Literal[0, 1, 2],
        dirs: Mapping[str, Path],
        missing: frozenset[str],
    ) -> None:
        self.name: Final = name
        self.missing: Final = missing
        self._version: Final = version
        self._dirs: Final = MappingProxyType(dict(dirs))
        unique = tuple(dict.fromkeys(dirs.values()))
        #: the group's directory in each hierarchy
        self.paths: Final[tuple[Path, ...]] = unique
        #: write the joining process's own pid into each of these to join the group
        self.procs_files: Final[tuple[str, ...]] = tuple(str(p / "cgroup.procs") for p in unique)
        self.removed = False

    def __repr__(self) -> str:
        return f"ContainerCgroup({self.name!r}, paths={[str(p) for p in self.paths]!r})"

    def attach(self, pid: int) -> None:
        """Move process ``pid``, all its threads, into the group in every hierarchy."""
        for path in self.paths:
            try:
                write_value(path / "cgroup.procs", str(pid))
            except OSError as exc:
                raise cgroup_error(path, f"writing {pid} to cgroup.procs", exc) from exc

    def pids(self) -> frozenset[int]:
        """The processes now in the group, in any hierarchy (or a group below it)."""
        return frozenset(member_pids(self.paths))

    def kill(self, *, spare: Collection[int] = ()) -> None:
        """SIGKILL every process in the group, including those in groups below it.

        v2 writes ``cgroup.kill``; v1 freezes the group when the freezer is in use, then
        signals every listed pid until none is left. Bounded by a short timeout: a process
        stuck in the kernel may outlive it, and :meth:`remove` reports that. A group that
        :meth:`freeze` froze is killed the same way: v1 thaws it once every process has its
        SIGKILL pending, so none of them runs again. Processes whose pid is in ``spare`` are
        left running (a helper that shares the group and is stopped its own way): a frozen
        group is thawed afterwards for them.
        """
        kill_groups(self.paths, self._version, spare=frozenset(spare))
        if spare and self.frozen:  # v1 thawed it already; on v2 the spared ones are frozen still
            self.thaw()

    def _freezer(self, action: str) -> Path:
        """The directory whose freezer holds the whole group; SandboxError saying what lacks."""
        problem = ""
        top = self._dirs.get(UNIFIED if self._version == 2 else "freezer")
        if self.removed:
            problem = "it was removed"
        elif self._version == 0:
            problem = "cgroups are not in use"
        elif top is None:
            problem = (
                "the cgroup v1 freezer hierarchy is not writable for this process; fix: mount "
                "the freezer controller writable (or use cgroup v2)"
            )
        elif not freezer_file(top, self._version).exists():
            fix = "run on Linux >= 5.2" if self._version == 2 else "recreate the group"
            problem = f"{freezer_file(top, self._version)} is missing; fix: {fix}"
        if problem or top is None:
            raise SandboxError(f"cannot {action} cgroup {self.name!r}: {problem}")
        return top

    @property
    def frozen(self) -> bool:
        """Whether the group reports FROZEN now (False without a freezer, and once removed)."""
        top = self._dirs.get(UNIFIED if self._version == 2 else "freezer")
        if self.removed or self._version == 0 or top is None:
            return False
        return freezer_state(top, self._version) == "FROZEN"

    def freeze(self, timeout: float) -> None:
        """Stop every process in the group where it stands until :meth:`thaw`; wait until it has.

        Uses the v1 ``freezer.state`` or the v2 ``cgroup.freeze``. Frozen processes take no CPU
        and act on no signal until thawed; :meth:`kill` and :meth:`remove` still end them.
        Raises SandboxError naming the group and the state it is stuck in when it does not
        report FROZEN within ``timeout`` seconds (a process in an uninterruptible wait, such as
        on a hung FUSE or network file system, holds it in FREEZING); the group is thawed again
        then, so it never stays half frozen. Also raises SandboxError when the group has no
        freezer (no cgroups, no v1 freezer hierarchy, or a v2 kernel before 5.2).
        """
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise SandboxError(
                f"cannot freeze cgroup {self.name!r}: timeout={timeout!r} must be seconds, > 0"
            )
        top = self._freezer("freeze")
        deadline = time.monotonic() + timeout
        set_frozen([top], self._version, frozen=True)
        wait_frozen([top], self._version, deadline)
        state = freezer_state(top, self._version)
        if state == "FROZEN":
            return
        try:
            set_frozen([top], self._version, frozen=False)
        except SandboxError as exc:
            after = f"thawing it back failed too ({exc})"
        else:
            after = "it was thawed again"
        raise SandboxError(
            f"cannot freeze cgroup {self.name!r} ({top}): it is still "
            f"{state or 'without a freezer file (gone)'} {timeout:g} s after asking; {after}; "
            "fix: a process in an uninterruptible wait holds it (see the D state in "
            "/proc/PID/stat and /proc/PID/stack): end that wait, or kill the group"
        )

    def thaw(self) -> None:
        """Let the group's processes run again after :meth:`freeze`. Idempotent; never waits.

        Raises SandboxError when the group has no freezer or the kernel refuses the write.
        """
        set_frozen([self._freezer("thaw")], self._version, frozen=False)

    def remove(self) -> None:
        """Kill, then remove the group's directory in every hierarchy.

        Idempotent; raises SandboxError only if a directory still exists and cannot be removed.
        """
        remove_groups(self.paths, self._version)
        self.removed = True

    def stats(self) -> CgroupStats:
        """The group's counters now."""
        if self._version == 2:
            return self._stats_v2()
        if self._version == 1:
            return self._stats_v1()
        return CgroupStats(None, None, None, 0, None, None, None, None)

    def _stats_v1(self) -> CgroupStats:
        mem = self._dirs.get("memory")
        pids = self._dirs.get("pids")
        cpu = self._dirs.get("cpu")
        acct = self._dirs.get("cpuacct")
        oom = read_keyed(mem / "memory.oom_control") if mem else {}
        cpu_stat = read_keyed(cpu / "cpu.stat") if cpu else {}
        return CgroupStats(
            memory_current=read_int(mem / "memory.usage_in_bytes") if mem else None,
            memory_peak=read_int(mem / "memory.max_usage_in_bytes") if mem else None,
            memory_limit=(
                read_int(mem / "memory.limit_in_bytes", unlimited=_V1_UNLIMITED) if mem else None
            ),
            oom_kills=oom.get("oom_kill", 0),
            pids_current=read_int(pids / "pids.current") if pids else None,
            pids_limit=read_int(pids / "pids.max") if pids else None,
            cpu_usage_ns=read_int(acct / "cpuacct.usage") if acct else None,
            cpu_throttled=cpu_stat.get("nr_throttled"),
        )

    def _stats_v2(self) -> CgroupStats:
        group = self._dirs.get(UNIFIED)
        if group is None:
            return CgroupStats(None, None, None, 0, None, None, None, None)
        cpu_stat = read_keyed(group / "cpu.stat")
        usage = cpu_stat.get("usage_usec")
        return CgroupStats(
            memory_current=read_int(group / "memory.current"),
            memory_peak=read_int(group / "memory.peak"),
            memory_limit=read_int(group / "memory.max"),
            oom_kills=read_keyed(group / "memory.events").get("oom_kill", 0),
            pids_current=read_int(group / "pids.current"),
            pids_limit=read_int(group / "pids.max"),
            cpu_usage_ns=usage * 1000 if usage is not None else None,
            cpu_throttled=cpu_stat.get("nr_throttled"),
        )


class CgroupTree:
    """The groups of one supervisor run: ``capsule/<run_name>/`` under every root.

    Nothing is created until :meth:`open`. Thread-safe: a lock guards the set of groups.
    """

    def __init__(self, support: CgroupSupport, run_name: str) -> None:
        check_name(run_name, "run name")
        self.support: Final = support
        self.run_name: Final = run_name
        self._lock = threading.Lock()
        self._groups: dict[str, ContainerCgroup] = {}
        self._opened = False
        self._usable: frozenset[str] = frozenset()
        # hierarchy key -> root; keys sharing one directory (v2, co-mounted v1) share a group
        self._roots: dict[str, Path] = dict(support.roots) if support.writable else {}

    def __enter__(self) -> CgroupTree:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        """The run directory in each hierarchy (created by :meth:`open`)."""
        return tuple(dict.fromkeys(r / CAPSULE_DIR / self.run_name for r in self._roots.values()))

    def open(self) -> None:
        """Create ``capsule/<run_name>/`` under every root (and, for v2, enable controllers)."""
        with self._lock:
            if self._opened:
                return
            made: list[Path] = []
            try:
                for run_dir in self.run_dirs:
                    capsule = run_dir.parent
                    for directory in (capsule, run_dir):
                        try:
                            directory.mkdir()
                        except FileExistsError:
                            continue
                        except OSError as exc:
                            raise cgroup_error(directory, "mkdir", exc) from exc
                        made.append(directory)
                    if self.support.version == 2:
                        enabled_above, _ = enable_controllers(capsule, self.support.controllers)
                        enabled, _ = enable_controllers(run_dir, enabled_above)
                        self._usable = frozenset(enabled)
                if self.support.version == 1:
                    self._usable = self.support.controllers
            except BaseException:
                for directory in reversed(made):
                    if directory.name != CAPSULE_DIR:
                        with contextlib.suppress(OSError):
                            directory.rmdir()
                raise
            self._opened = True

    def create(
        self,
        name: str,
        *,
        memory: int | None,
        pids: int | None,
        cpu: float | None,
    ) -> ContainerCgroup:
        """Create the group ``name`` with the given limits (None: no limit).

        ``memory`` is in bytes, ``pids`` the most processes and threads at once, ``cpu`` in
        CPUs (0.5: half of one). Limits whose controller is unavailable are skipped and named
        in the result's ``missing``.
        """
        check_name(name, "name")
        check_limits(memory=memory, pids=pids, cpu=cpu)
        with self._lock:
            if not self._opened and self._roots:
                raise InternalError("CgroupTree.create() called before open()")
            old = self._groups.get(name)
            if old is not None and not old.removed:
                raise SandboxError(
                    f"cgroup {name!r} exists already in run {self.run_name}; fix: remove() it "
                    "first or choose another name"
                )
            requested = {
                c for c, v in (("memory", memory), ("pids", pids), ("cpu", cpu)) if v is not None
            }
            missing = frozenset(requested - self._usable)
            dirs: dict[str, Path] = {}
            made: list[Path] = []
            try:
                for key, root in self._roots.items():
                    group = root / CAPSULE_DIR / self.run_name / name
                    if group not in made:
                        try:
                            group.mkdir()
                        except OSError as exc:
                            raise cgroup_error(group, "mkdir", exc) from exc
                        made.append(group)
                    dirs[key] = group
                version = self.support.version
                if version == 1:
                    limit_v1(dirs, memory=memory, pids=pids, cpu=cpu, usable=self._usable)
                elif version == 2:
                    limit_v2(dirs, memory=memory, pids=pids, cpu=cpu, usable=self._usable)
            except BaseException:
                with contextlib.suppress(SandboxError):
                    remove_groups(made, self.support.version)
                raise
            result = ContainerCgroup(name, version=self.support.version, dirs=dirs, missing=missing)
            self._groups[name] = result
            return result

    def close(self) -> None:
        """Kill and remove every group made here, then the run directories. Idempotent.

        Raises SandboxError (the first failure) only after trying everything, and never for
        directories that are gone already. ``capsule/`` itself goes only once it is empty.
        """
        with self._lock:
            failure: SandboxError | None = None
            for group in list(self._groups.values()):
                try:
                    group.remove()
                except SandboxError as exc:
                    failure = failure or exc
            self._groups.clear()
            try:
                remove_groups(self.run_dirs, self.support.version)
            except SandboxError as exc:
                failure = failure or exc
            self._opened = False
            for parent in {run_dir.parent for run_dir in self.run_dirs}:
                # the shared capsule/ goes too once the last run has left it (others keep it busy)
                with contextlib.suppress(OSError):
                    parent.rmdir()
            if failure is not None:
                raise failure
