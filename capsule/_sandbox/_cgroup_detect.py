"""Which cgroups this process can use: the version, the usable controllers and their roots.

Reads /proc/self/mountinfo and /proc/self/cgroup; for cgroup v2 it creates ``capsule/`` and
enables controllers, since only trying tells whether the kernel allows it. Creates no group.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from capsule._sandbox._cgroup_files import (
    CAPSULE_DIR,
    CONTROLLERS,
    FIX_PERMISSION,
    PROC,
    UNIFIED,
    errname,
    is_writable,
    read_text,
    write_value,
)

__all__ = [
    "CgroupSupport",
    "detect",
    "enable_controllers",
]

#: v1 hierarchies used without limits: CPU time accounting and atomic killing.
_V1_HELPERS: Final[tuple[str, ...]] = ("cpuacct", "freezer")


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
class _Mount:
    root: str  # the path inside the hierarchy that is mounted here
    point: Path
    fstype: str
    options: frozenset[str]  # super options: for v1 they name the controllers


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read_mounts(path: Path) -> list[_Mount]:
    text = read_text(path) or ""
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
    text = read_text(path) or ""
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
        if not is_writable(target if target.is_dir() else where):
            if ctrl in CONTROLLERS:
                problems.append(f"{ctrl} at {where} is not writable")
                permission = True
            continue
        roots[ctrl] = where
    controllers = frozenset(c for c in CONTROLLERS if c in roots)
    reason = ""
    if problems:
        fix = FIX_PERMISSION if permission else "mount the missing cgroup v1 controllers"
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


def enable_controllers(group: Path, wanted: Iterable[str]) -> tuple[set[str], list[str]]:
    """Enable ``wanted`` controllers in ``group``'s subtree_control, one at a time.

    Returns (controllers now enabled there, problems as text).
    """
    problems: list[str] = []
    available = set((read_text(group / "cgroup.controllers") or "").split())
    enabled = set((read_text(group / "cgroup.subtree_control") or "").split())
    for ctrl in sorted(set(wanted) - enabled):
        if ctrl not in available:
            continue
        try:
            write_value(group / "cgroup.subtree_control", f"+{ctrl}")
        except OSError as exc:
            problems.append(f"+{ctrl} in {group}/cgroup.subtree_control: {errname(exc)}")
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
    return not (read_text(group / "cgroup.procs") or "").strip()


def _prepare_v2_base(base: Path, wanted: frozenset[str]) -> tuple[frozenset[str], list[str]]:
    """Create ``base/capsule`` and enable ``wanted`` down to it; return what its children get."""
    problems: list[str] = []
    if _may_delegate(base):
        _, problems = enable_controllers(base, wanted)
    else:
        problems.append(f"{base} holds processes, so it cannot delegate controllers")
    capsule = base / CAPSULE_DIR
    try:
        capsule.mkdir(exist_ok=True)
    except OSError as exc:
        return frozenset(), [*problems, f"mkdir {capsule}: {errname(exc)}"]
    usable, more = enable_controllers(capsule, wanted)
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
        if not (is_writable(base) and os.access(procs, os.W_OK)):
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
            reason=f"{'; '.join(problems)}: {FIX_PERMISSION}",
        )
    base, usable = best
    reason = ""
    order = [c for c in CONTROLLERS if c in wanted] + sorted(wanted - set(CONTROLLERS))
    missing = [c for c in order if c not in usable]
    if missing:
        available = set((read_text(base / "cgroup.controllers") or "").split())
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
                f"({', '.join(problems) or 'refused'}): {FIX_PERMISSION}, with the supervisor "
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
    mountinfo: Path = PROC / "self" / "mountinfo",
    cgroup_file: Path = PROC / "self" / "cgroup",
    prefer: Literal[1, 2] | None = None,
) -> CgroupSupport:
    try:
        mounts = _read_mounts(mountinfo)
        v1_paths, v2_path = _read_self_cgroups(cgroup_file)
    except OSError as exc:
        return _unavailable(f"cannot read {mountinfo} or {cgroup_file}: {errname(exc)}")
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
