"""What isolation this machine supports, and what an app's containers will get.

Probes only (reads /proc and /sys, asks the kernel for versions); changes nothing.
Used by ``capsule doctor`` and by the supervisor before it starts any container.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from capsule._manifest._app import WAIVABLE
from capsule._sandbox import _cgroup_detect, _landlock, _seccomp
from capsule.errors import SandboxError

__all__ = ["WAIVABLE", "Isolation", "Mechanism", "probe", "require"]

Level = Literal["full", "reduced", "none"]


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One isolation mechanism: present or not, what was found, how to get it."""

    name: str
    available: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Isolation:
    """The machine's mechanisms and the level they add up to."""

    mechanisms: tuple[Mechanism, ...]
    rootless: bool
    landlock_abi: int
    cgroups: _cgroup_detect.CgroupSupport

    def get(self, name: str) -> Mechanism:
        return next(m for m in self.mechanisms if m.name == name)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.mechanisms if not m.available)

    @property
    def level(self) -> Level:
        if not self.get("user namespaces").available:
            return "none"
        if any(not self.get(name).available for name in WAIVABLE):
            return "reduced"
        return "full"


def _ok(name: str, detail: str) -> Mechanism:
    return Mechanism(name, available=True, detail=detail)


def _missing(name: str, detail: str, fix: str) -> Mechanism:
    return Mechanism(name, available=False, detail=detail, fix=fix)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _user_namespaces(*, rootless: bool) -> Mechanism:
    name = "user namespaces"
    limit = _read("/proc/sys/user/max_user_namespaces")
    if limit is not None and limit == "0":
        return _missing(
            name, "user.max_user_namespaces is 0", "sysctl -w user.max_user_namespaces=15000"
        )
    if rootless:
        if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
            return _missing(
                name,
                "unprivileged user namespaces are disabled",
                "sysctl -w kernel.unprivileged_userns_clone=1",
            )
        if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
            return _missing(
                name,
                "AppArmor restricts unprivileged user namespaces",
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root",
            )
    if not os.path.exists("/proc/self/ns/user"):
        return _missing(name, "the kernel has no user namespaces", "CONFIG_USER_NS=y")
    detail = "available" + (" (rootless: every container maps to your own uid)" if rootless else "")
    return _ok(name, detail)


def _fuse(*, rootless: bool) -> Mechanism:
    if not os.path.exists("/dev/fuse"):
        return _missing("fuse", "/dev/fuse is missing", "modprobe fuse")
    if rootless and shutil.which("fusermount3") is None:
        return _missing("fuse", "fusermount3 is not installed", "sudo apt-get install fuse3")
    return _ok("fuse", "/dev/fuse")


def _landlock_mechanism(abi: int) -> Mechanism:
    if abi == 0:
        return _missing(
            "landlock",
            "not supported or disabled",
            "Linux >= 5.13 with landlock in the lsm= kernel command line",
        )
    return _ok("landlock", f"ABI {abi}: {_landlock.ABI_FEATURES.get(abi, 'newer')}")


def _seccomp_mechanism() -> Mechanism:
    available, reason = _seccomp.available()
    if not available:
        return _missing("seccomp", reason, "a kernel built with CONFIG_SECCOMP_FILTER=y")
    return _ok("seccomp", "filters with errno and kill_process")


def _cgroup_mechanism(support: _cgroup_detect.CgroupSupport) -> Mechanism:
    wanted = {"memory", "pids", "cpu"}
    if support.version == 0 or not support.writable:
        return _missing("cgroups", support.reason or "no cgroups", support.reason)
    missing = wanted - support.controllers
    if missing:
        listed = ", ".join(sorted(missing))
        return _missing("cgroups", f"{support.describe()}; missing {listed}", support.reason)
    return _ok("cgroups", support.describe())


def probe() -> Isolation:
    rootless = os.geteuid() != 0
    abi = _landlock.abi_version()
    support = _cgroup_detect.detect()
    mechanisms = (
        _user_namespaces(rootless=rootless),
        _fuse(rootless=rootless),
        _landlock_mechanism(abi),
        _seccomp_mechanism(),
        _cgroup_mechanism(support),
    )
    return Isolation(mechanisms=mechanisms, rootless=rootless, landlock_abi=abi, cgroups=support)


def require(isolation: Isolation, allowed_missing: Iterable[str], *, app: str) -> None:
    """Refuse to run ``app`` if a mechanism it did not waive is missing; say how to fix it."""
    waived = set(allowed_missing)
    refused = [
        isolation.get(name)
        for name in ("user namespaces", *WAIVABLE)
        if not isolation.get(name).available and name not in waived
    ]
    if not refused:
        return
    lines = [f"{m.name}: {m.detail}" + (f" (fix: {m.fix})" if m.fix else "") for m in refused]
    waivable = [m.name for m in refused if m.name in WAIVABLE]
    hint = (
        f"; or accept weaker isolation with allow_missing = {waivable!r} in [app] of app.toml"
        if waivable
        else ""
    )
    raise SandboxError(
        f"app {app!r} cannot run its containers at full isolation here: "
        + "; ".join(lines)
        + hint
        + " (see `capsule doctor`)"
    )
