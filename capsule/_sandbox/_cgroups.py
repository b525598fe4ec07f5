"""Per-container resource limits through cgroups: detect, create, limit, measure, kill, remove.

File operations only: decides no policy, starts no thread, never imports the rest of capsule
except capsule.errors, and never touches a cgroup outside the ``capsule/`` directories it owns.

Layout. Under each *root* (see :class:`CgroupSupport`) the runtime keeps one shared ``capsule/``
directory, one run directory per supervisor process named ``<pid>-<starttime>`` (so a reused pid
never matches a dead supervisor's directory) and one group per container::

    <root>/capsule/<run_name>/<container>/

cgroup v1 has one hierarchy per mounted controller set, so a container is one directory in each
hierarchy and a process joins by writing its pid into every ``cgroup.procs`` listed in
:attr:`ContainerCgroup.procs_files`. Besides ``memory``, ``pids`` and ``cpu``, a separately
mounted ``cpuacct`` hierarchy (CPU time) and the ``freezer`` hierarchy (race-free killing) are
used when writable. cgroup v2 has one hierarchy; its "no internal processes" rule means the
groups cannot live next to the supervisor's own processes, so ``capsule/`` is created in the
parent of the supervisor's cgroup when that cgroup holds processes (unless it is the root), and
the controllers are enabled in ``cgroup.subtree_control`` on the way down.

Every function is synchronous and meant for a worker thread: nothing here blocks for longer than
the short, bounded waits of :meth:`ContainerCgroup.kill` and :meth:`ContainerCgroup.remove`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final, Literal

from capsule.errors import InternalError, SandboxError

__all__ = [
    "CgroupStats",
    "CgroupSupport",
    "CgroupTree",
    "ContainerCgroup",
    "cleanup_stale",
    "detect",
    "run_name_for",
]

#: the controllers that carry limits, in the order they are reported.
CONTROLLERS: Final[tuple[str, ...]] = ("memory", "pids", "cpu")
#: v1 hierarchies used without limits: CPU time accounting and atomic killing.
_V1_HELPERS: Final[tuple[str, ...]] = ("cpuacct", "freezer")
#: the key under which :attr:`CgroupSupport.roots` names the single v2 hierarchy.
UNIFIED: Final = "unified"
#: the directory, under each root, that holds every group this module creates.
CAPSULE_DIR: Final = "capsule"

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_NAME_MAX: Final = 128
_RUN_RE: Final = re.compile(r"([0-9]+)-([0-9]+)\Z")
_CPU_PERIOD_US: Final = 100_000
_CPU_MIN_QUOTA_US: Final = 1_000
#: v1 reports "no memory limit" as the page counter maximum; anything this large is unlimited.
_V1_UNLIMITED: Final = 1 << 62
_KILL_TIMEOUT: Final = 2.0
_FREEZE_TIMEOUT: Final = 0.5
_RMDIR_TIMEOUT: Final = 2.0
_PROC: Final = Path("/proc")

_FIX_PERMISSION: Final = (
    "run as root or under a systemd user slice with Delegate=yes "
    "(e.g. systemd-run --user --scope -p Delegate=yes ...)"
)


# --------------------------------------------------------------------------------------------
# public data


@dataclass(frozen=True)
class CgroupSupport:
    """What cgroups this process can use, as found by :func:`detect`.

    ``controllers`` holds the limit controllers (of ``memory``, ``pids``, ``cpu``) that groups
    created under ``roots`` will have. ``roots`` maps a controller to the directory under which
    ``capsule/`` lives; it may hold keys beyond ``controllers``: hierarchies used without limits
    (v1 ``cpuacct`` and ``freezer``; for v2 always ``unified``, the single hierarchy itself).
    ``writable`` is true when groups can be created at all, and ``reason`` explains in one line
    what is missing and how to fix it (empty when nothing is).
    """

    version: Literal[0, 1, 2]
    controllers: frozenset[str]
    roots: Mapping[str, Path]
    writable: bool
    reason: str = ""

    def describe(self) -> str:
        """One line for diagnostics, e.g. ``cgroup v1: memory, pids, cpu``."""
        if self.version == 0:
            return f"no cgroups: {self.reason}" if self.reason else "no cgroups"
        names = [c for c in CONTROLLERS if c in self.controllers]
        text = f"cgroup v{self.version}: {', '.join(names) if names else 'no usable controllers'}"
        return f"{text} ({self.reason})" if self.reason else text


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


# --------------------------------------------------------------------------------------------
# small file helpers


def _errname(exc: OSError) -> str:
    code = exc.errno or 0
    return errno.errorcode.get(code, f"errno {code}")


def _fix_for(exc: OSError) -> str:
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return _FIX_PERMISSION
    if code == errno.EROFS:
        return "the cgroup file system is mounted read-only: mount it read-write or " + (
            _FIX_PERMISSION
        )
    if code == errno.EBUSY:
        return (
            "the group still holds processes or has controllers enabled below it; "
            "stop them, or move the supervisor into a leaf cgroup of its own"
        )
    if code == errno.ENOSPC:
        return "a cgroup.max.descendants or cgroup.max.depth limit was reached: raise it"
    if code == errno.EINVAL:
        return "the kernel rejected the value: choose a limit it accepts"
    if code == errno.ENOENT:
        return "the controller is not enabled for this group: enable it in cgroup.subtree_control"
    if code == errno.EEXIST:
        return "a group of that name exists already: remove it or choose another name"
    return "check the cgroup file system (see /proc/self/cgroup and /proc/self/mountinfo)"


def _error(group: Path, what: str, exc: OSError) -> SandboxError:
    """A SandboxError naming the cgroup, the file or action, the errno and a fix."""
    return SandboxError(
        f"cgroup {group}: {what} failed with {_errname(exc)} ({exc.strerror}); fix: {_fix_for(exc)}"
    )


def _write(path: Path, value: str) -> None:
    """Write ``value`` in a single write(2), as cgroup files require."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    """The text of a cgroup file, or None if it (or its group) does not exist."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ESRCH):
            return None
        raise


def _read_int(path: Path, *, unlimited: int | None = None) -> int | None:
    """An integer file; ``max`` (and v1 values at or above ``unlimited``) read as None."""
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if unlimited is not None and value >= unlimited:
        return None
    return value


def _read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed file (``key value`` per line) such as cpu.stat or memory.events."""
    text = _read(path)
    result: dict[str, int] = {}
    if text is None:
        return result
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                result[parts[0]] = int(parts[1])
    return result


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if there is no such pid."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or parentheses
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])  # fields[0] is field 3 (state), so field 22 is fields[19]


def run_name_for(pid: int) -> str:
    """The run directory name of supervisor ``pid``: ``<pid>-<starttime>``.

    Raises ProcessLookupError when the process does not exist.
    """
    start = _starttime(pid)
    if start is None:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}")
    return f"{pid}-{start}"


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or len(name) > _NAME_MAX or _NAME_RE.match(name) is None:
        raise SandboxError(
            f"invalid cgroup {what} {name!r}: use 1 to {_NAME_MAX} characters of "
            "a-z, 0-9, '.', '_' and '-', starting with a letter or digit (no slashes)"
        )


# --------------------------------------------------------------------------------------------
# detection


@dataclass(frozen=True)
class _Mount:
    root: str  # the path inside the hierarchy that is mounted here
    point: Path
    fstype: str
    options: frozenset[str]  # super options: for v1 they name the controllers


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read_mounts(path: Path) -> list[_Mount]:
    text = _read(path) or ""
    mounts: list[_Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            _Mount(
                root=_unescape(fields[3]),
                point=Path(_unescape(fields[4])),
                fstype=tail[0],
                options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def _read_self_cgroups(path: Path) -> tuple[dict[str, str], str | None]:
    """(v1 controller -> cgroup path, v2 cgroup path or None) from /proc/self/cgroup."""
    text = _read(path) or ""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        names, _, cgpath = rest.partition(":")
        if hid == "0" and not names:
            v2 = cgpath
        else:
            for name in names.split(","):
                if name:
                    v1[name] = cgpath
    return v1, v2


def _map_into(mount: _Mount, cgpath: str) -> Path | None:
    """Where cgroup ``cgpath`` of the mount's hierarchy appears in the file system, if it does."""
    root = mount.root.rstrip("/")
    if cgpath not in (mount.root, root) and not cgpath.startswith(root + "/"):
        return None
    rel = cgpath[len(root) :].strip("/")
    if ".." in rel.split("/"):
        return None
    return mount.point / rel if rel else mount.point


def _unavailable(reason: str) -> CgroupSupport:
    return CgroupSupport(
        version=0,
        controllers=frozenset(),
        roots=MappingProxyType({}),
        writable=False,
        reason=reason,
    )


def _detect_v1(mounts: Sequence[_Mount], own: Mapping[str, str]) -> CgroupSupport:
    roots: dict[str, Path] = {}
    problems: list[str] = []
    permission = False
    for ctrl in CONTROLLERS + _V1_HELPERS:
        where = None
        if ctrl in own:
            for mount in mounts:
                if mount.fstype == "cgroup" and ctrl in mount.options:
                    where = _map_into(mount, own[ctrl])
                    if where is not None:
                        break
        if where is None:
            if ctrl in CONTROLLERS:
                problems.append(f"{ctrl} is not mounted where this process can see its cgroup")
            continue
        target = where / CAPSULE_DIR
        if not _writable(target if target.is_dir() else where):
            if ctrl in CONTROLLERS:
                problems.append(f"{ctrl} at {where} is not writable")
                permission = True
            continue
        roots[ctrl] = where
    controllers = frozenset(c for c in CONTROLLERS if c in roots)
    reason = ""
    if problems:
        fix = _FIX_PERMISSION if permission else "mount the missing cgroup v1 controllers"
        reason = f"{'; '.join(problems)}: {fix}"
    if not controllers:
        roots.clear()
    return CgroupSupport(
        version=1,
        controllers=controllers,
        roots=MappingProxyType(roots),
        writable=bool(controllers),
        reason=reason,
    )


def _enable(group: Path, wanted: Iterable[str]) -> tuple[set[str], list[str]]:
    """Enable ``wanted`` controllers in ``group``'s subtree_control, one at a time.

    Returns (controllers now enabled there, problems as text).
    """
    problems: list[str] = []
    available = set((_read(group / "cgroup.controllers") or "").split())
    enabled = set((_read(group / "cgroup.subtree_control") or "").split())
    for ctrl in sorted(set(wanted) - enabled):
        if ctrl not in available:
            continue
        try:
            _write(group / "cgroup.subtree_control", f"+{ctrl}")
        except OSError as exc:
            problems.append(f"+{ctrl} in {group}/cgroup.subtree_control: {_errname(exc)}")
        else:
            enabled.add(ctrl)
    return enabled & set(wanted), problems


def _may_delegate(group: Path) -> bool:
    """Whether controllers may be enabled in ``group``'s subtree_control without harm.

    The root cgroup (it alone has no cgroup.type) may; any other cgroup only while it holds no
    processes: the kernel refuses domain controllers there (EBUSY), and enabling a threaded one
    (pids, cpu) would turn it into a thread root and invalidate its domain children.
    """
    if not (group / "cgroup.type").exists():
        return True
    return not (_read(group / "cgroup.procs") or "").strip()


def _prepare_v2_base(base: Path, wanted: frozenset[str]) -> tuple[frozenset[str], list[str]]:
    """Create ``base/capsule`` and enable ``wanted`` down to it; return what its children get."""
    problems: list[str] = []
    if _may_delegate(base):
        _, problems = _enable(base, wanted)
    else:
        problems.append(f"{base} holds processes, so it cannot delegate controllers")
    capsule = base / CAPSULE_DIR
    try:
        capsule.mkdir(exist_ok=True)
    except OSError as exc:
        return frozenset(), [*problems, f"mkdir {capsule}: {_errname(exc)}"]
    usable, more = _enable(capsule, wanted)
    return frozenset(usable), problems + more


def _detect_v2(
    mount_point: Path, own: Path, wanted: frozenset[str] = frozenset(CONTROLLERS)
) -> CgroupSupport:
    """Choose where ``capsule/`` goes in the v2 hierarchy mounted at ``mount_point``.

    ``own`` is the supervisor's own cgroup directory. The root cgroup may hold processes and
    still delegate; any other cgroup holding processes may not ("no internal processes"), so
    its parent is tried first, then ``own`` itself, which then gives its groups only what is
    enabled already (usually nothing: they can still be killed and measured).
    """
    candidates = [own]
    if not _may_delegate(own) and own != mount_point:
        candidates = [own.parent, own]
    best: tuple[Path, frozenset[str]] | None = None
    created: list[Path] = []
    problems: list[str] = []
    for base in candidates:
        procs = base / "cgroup.procs"
        if not (_writable(base) and os.access(procs, os.W_OK)):
            problems.append(f"{base} is not writable")
            continue
        if not (base / CAPSULE_DIR).is_dir():
            created.append(base / CAPSULE_DIR)
        usable, found = _prepare_v2_base(base, wanted)
        problems.extend(found)
        if best is None or len(usable) > len(best[1]):
            best = (base, usable)
        if usable == wanted:
            break
    for capsule in created:  # capsule/ directories made for a candidate not chosen
        if best is None or capsule.parent != best[0]:
            with contextlib.suppress(OSError):
                capsule.rmdir()
    if best is None:
        return CgroupSupport(
            version=2,
            controllers=frozenset(),
            roots=MappingProxyType({}),
            writable=False,
            reason=f"{'; '.join(problems)}: {_FIX_PERMISSION}",
        )
    base, usable = best
    reason = ""
    order = [c for c in CONTROLLERS if c in wanted] + sorted(wanted - set(CONTROLLERS))
    missing = [c for c in order if c not in usable]
    if missing:
        available = set((_read(base / "cgroup.controllers") or "").split())
        absent = [c for c in missing if c not in available]
        refused = [c for c in missing if c in available]
        detail: list[str] = []
        if absent:
            detail.append(
                f"{', '.join(absent)} not offered in {base}/cgroup.controllers: enable them in "
                "the parent's cgroup.subtree_control (they may be bound to cgroup v1: boot with "
                "systemd.unified_cgroup_hierarchy=1)"
            )
        if refused:
            detail.append(
                f"{', '.join(refused)} could not be enabled below {base} "
                f"({', '.join(problems) or 'refused'}): {_FIX_PERMISSION}, with the supervisor "
                "alone in a leaf cgroup whose parent it may write"
            )
        reason = "; ".join(detail)
    roots = {UNIFIED: base} | dict.fromkeys(usable, base)
    return CgroupSupport(
        version=2,
        controllers=usable,
        roots=MappingProxyType(roots),
        writable=True,
        reason=reason,
    )


def _detect(
    *,
    mountinfo: Path = _PROC / "self" / "mountinfo",
    cgroup_file: Path = _PROC / "self" / "cgroup",
    prefer: Literal[1, 2] | None = None,
) -> CgroupSupport:
    try:
        mounts = _read_mounts(mountinfo)
        v1_paths, v2_path = _read_self_cgroups(cgroup_file)
    except OSError as exc:
        return _unavailable(f"cannot read {mountinfo} or {cgroup_file}: {_errname(exc)}")
    has_v1 = any(m.fstype == "cgroup" and m.options & set(CONTROLLERS) for m in mounts)
    if has_v1 and prefer != 2:
        return _detect_v1(mounts, v1_paths)
    if v2_path is not None and prefer != 1:
        for mount in mounts:
            if mount.fstype != "cgroup2":
                continue
            own = _map_into(mount, v2_path)
            if own is not None and own.is_dir():
                return _detect_v2(mount.point, own)
        return _unavailable(
            f"cgroup v2 path {v2_path} is not visible under any cgroup2 mount: "
            "mount cgroup2 on /sys/fs/cgroup (in a container: use a private cgroup namespace)"
        )
    return _unavailable(
        "no cgroup file system is mounted: mount cgroup2 on /sys/fs/cgroup "
        "(or run on a host or container that provides it)"
    )


def detect() -> CgroupSupport:
    """Find the cgroup version, usable controllers and roots for this process.

    For v1 nothing is created. For v2 ``capsule/`` is created under the chosen root and the
    controllers are enabled in ``cgroup.subtree_control`` on the way, since only trying tells
    whether the kernel allows it.
    """
    return _detect()


# --------------------------------------------------------------------------------------------
# killing and removing


def _subtree(top: Path) -> list[Path]:
    """``top`` and every cgroup below it, children before parents; [] if ``top`` is gone."""
    if not top.is_dir():
        return []
    return [Path(dirpath) for dirpath, _, _ in os.walk(top, topdown=False)]


def _member_pids(tops: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for top in tops:
        for group in _subtree(top):
            text = _read(group / "cgroup.procs")
            if text:
                pids.update(int(p) for p in text.split() if p.isdigit() and p != "0")
    return pids


def _signal_members(tops: Sequence[Path]) -> bool:
    """SIGKILL every process in ``tops``; False if there was none.

    Each pid is pinned with a pidfd first and signalled only if it is still listed in a group
    afterwards, so a pid that was freed and reused in between is never hit.
    """
    pids = _member_pids(tops)
    if not pids:
        return False
    pinned: dict[int, int | None] = {}
    try:
        for pid in pids:
            try:
                pinned[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:
                pinned[pid] = None  # no pidfd support: fall back to kill(2)
        still = _member_pids(tops)
        for pid, fd in pinned.items():
            if pid not in still:
                continue
            with contextlib.suppress(ProcessLookupError):
                if fd is None:
                    os.kill(pid, signal.SIGKILL)
                else:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        for fd in pinned.values():
            if fd is not None:
                os.close(fd)
    return True


def _set_freezer(tops: Iterable[Path], state: str) -> None:
    for top in tops:
        groups = _subtree(top) if state == "THAWED" else [top]
        for group in groups:
            with contextlib.suppress(OSError):
                _write(group / "freezer.state", state)


def _wait_frozen(tops: Sequence[Path], deadline: float) -> None:
    while time.monotonic() < deadline:
        if all((_read(t / "freezer.state") or "FROZEN").strip() == "FROZEN" for t in tops):
            return
        time.sleep(0.002)


def _kill_groups(tops: Sequence[Path], version: int, timeout: float = _KILL_TIMEOUT) -> bool:
    """Kill every process in ``tops`` and their descendants; True once they are all gone."""
    deadline = time.monotonic() + timeout
    tops = [t for t in tops if t.is_dir()]
    if not tops:
        return True
    if version == 2:
        for top in tops:
            with contextlib.suppress(OSError):  # gone already, or a kernel before 5.14
                _write(top / "cgroup.kill", "1")
    freezers = [t for t in tops if (t / "freezer.state").exists()] if version == 1 else []
    if freezers:
        # frozen processes cannot fork or exit: the pid list stays complete while we signal
        _set_freezer(freezers, "FROZEN")
        try:
            _wait_frozen(freezers, min(deadline, time.monotonic() + _FREEZE_TIMEOUT))
            _signal_members(tops)
        finally:
            _set_freezer(freezers, "THAWED")
    delay = 0.001
    while _member_pids(tops):
        if time.monotonic() >= deadline:
            return False
        _signal_members(tops)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _remove_groups(tops: Sequence[Path], version: int) -> None:
    """Kill, then rmdir ``tops`` and everything below them, retrying briefly on EBUSY."""
    _kill_groups(tops, version)
    deadline = time.monotonic() + _RMDIR_TIMEOUT
    failure: SandboxError | None = None
    for top in tops:
        for group in _subtree(top):
            delay = 0.002
            while True:
                try:
                    group.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        _kill_groups(tops, version, timeout=delay)
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                        continue
                    failure = failure or _error(group, "rmdir", exc)
                    break
                else:
                    break
    if failure is not None:
        raise failure


# --------------------------------------------------------------------------------------------
# groups


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
                _write(path / "cgroup.procs", str(pid))
            except OSError as exc:
                raise _error(path, f"writing {pid} to cgroup.procs", exc) from exc

    def pids(self) -> frozenset[int]:
        """The processes now in the group, in any hierarchy (or a group below it)."""
        return frozenset(_member_pids(self.paths))

    def kill(self) -> None:
        """SIGKILL every process in the group, including those in groups below it.

        v2 writes ``cgroup.kill``; v1 freezes the group when the freezer is in use, then
        signals every listed pid until none is left. Bounded by a short timeout: a process
        stuck in the kernel may outlive it, and :meth:`remove` reports that.
        """
        _kill_groups(self.paths, self._version)

    def remove(self) -> None:
        """Kill, then remove the group's directory in every hierarchy.

        Idempotent; raises SandboxError only if a directory still exists and cannot be removed.
        """
        _remove_groups(self.paths, self._version)
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
        oom = _read_keyed(mem / "memory.oom_control") if mem else {}
        cpu_stat = _read_keyed(cpu / "cpu.stat") if cpu else {}
        return CgroupStats(
            memory_current=_read_int(mem / "memory.usage_in_bytes") if mem else None,
            memory_peak=_read_int(mem / "memory.max_usage_in_bytes") if mem else None,
            memory_limit=(
                _read_int(mem / "memory.limit_in_bytes", unlimited=_V1_UNLIMITED) if mem else None
            ),
            oom_kills=oom.get("oom_kill", 0),
            pids_current=_read_int(pids / "pids.current") if pids else None,
            pids_limit=_read_int(pids / "pids.max") if pids else None,
            cpu_usage_ns=_read_int(acct / "cpuacct.usage") if acct else None,
            cpu_throttled=cpu_stat.get("nr_throttled"),
        )

    def _stats_v2(self) -> CgroupStats:
        group = self._dirs.get(UNIFIED)
        if group is None:
            return CgroupStats(None, None, None, 0, None, None, None, None)
        cpu_stat = _read_keyed(group / "cpu.stat")
        usage = cpu_stat.get("usage_usec")
        return CgroupStats(
            memory_current=_read_int(group / "memory.current"),
            memory_peak=_read_int(group / "memory.peak"),
            memory_limit=_read_int(group / "memory.max"),
            oom_kills=_read_keyed(group / "memory.events").get("oom_kill", 0),
            pids_current=_read_int(group / "pids.current"),
            pids_limit=_read_int(group / "pids.max"),
            cpu_usage_ns=usage * 1000 if usage is not None else None,
            cpu_throttled=cpu_stat.get("nr_throttled"),
        )


class CgroupTree:
    """The groups of one supervisor run: ``capsule/<run_name>/`` under every root.

    Nothing is created until :meth:`open`. Thread-safe: a lock guards the set of groups.
    """

    def __init__(self, support: CgroupSupport, run_name: str) -> None:
        _check_name(run_name, "run name")
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
                            raise _error(directory, "mkdir", exc) from exc
                        made.append(directory)
                    if self.support.version == 2:
                        enabled_above, _ = _enable(capsule, self.support.controllers)
                        enabled, _ = _enable(run_dir, enabled_above)
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
        _check_name(name, "name")
        _check_limits(memory=memory, pids=pids, cpu=cpu)
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
                            raise _error(group, "mkdir", exc) from exc
                        made.append(group)
                    dirs[key] = group
                version = self.support.version
                if version == 1:
                    _limit_v1(dirs, memory=memory, pids=pids, cpu=cpu, usable=self._usable)
                elif version == 2:
                    _limit_v2(dirs, memory=memory, pids=pids, cpu=cpu, usable=self._usable)
            except BaseException:
                with contextlib.suppress(SandboxError):
                    _remove_groups(made, self.support.version)
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
                _remove_groups(self.run_dirs, self.support.version)
            except SandboxError as exc:
                failure = failure or exc
            self._opened = False
            for parent in {run_dir.parent for run_dir in self.run_dirs}:
                # the shared capsule/ goes too once the last run has left it (others keep it busy)
                with contextlib.suppress(OSError):
                    parent.rmdir()
            if failure is not None:
                raise failure


def _check_limits(*, memory: int | None, pids: int | None, cpu: float | None) -> None:
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
            _write(path, value)
        except OSError as exc:
            raise _error(group, f"writing {value!r} to {filename}", exc) from exc


def _limit_v1(
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


def _limit_v2(
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


# --------------------------------------------------------------------------------------------
# stale runs


def _stale_runs(support: CgroupSupport) -> Iterator[tuple[str, list[Path]]]:
    """(run name, its directory in each hierarchy) for every run whose supervisor is gone."""
    found: dict[str, list[Path]] = {}
    for root in dict.fromkeys(support.roots.values()):
        capsule = root / CAPSULE_DIR
        try:
            entries = list(os.scandir(capsule))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if _RUN_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
                found.setdefault(entry.name, []).append(Path(entry.path))
    for run_name, dirs in sorted(found.items()):
        match = _RUN_RE.match(run_name)
        assert match is not None  # noqa: S101 - filtered above; narrows the type
        pid, start = int(match.group(1)), int(match.group(2))
        if _starttime(pid) == start:
            continue  # a live supervisor: never touched
        yield run_name, dirs


def cleanup_stale(support: CgroupSupport) -> list[str]:
    """Kill and remove the run directories of supervisors that are gone; return their paths.

    A run directory is stale when no process has its pid, or the process with that pid started
    at another time (the pid was reused). Only ``capsule/<pid>-<starttime>`` directories are
    considered; groups below them are removed children first. A directory that cannot be
    removed (a process stuck in the kernel) is left for the next call and not returned.
    """
    removed: list[str] = []
    for _, dirs in _stale_runs(support):
        try:
            _remove_groups(dirs, support.version)
        except SandboxError:
            removed.extend(str(d) for d in dirs if not d.exists())
            continue
        removed.extend(str(d) for d in dirs)
    return removed
