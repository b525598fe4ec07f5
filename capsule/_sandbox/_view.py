"""Builds a container's root from scratch: tmpfs, read-only binds, /proc, /dev, /tmp, pivot_root.

Runs in the forked child, inside its new user and mount namespaces, before the uid
drop; it mounts only what the plan lists and decides nothing itself.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import msgspec

from capsule._sandbox import _syscalls as sc

__all__ = ["Bind", "ViewPlan", "build_root", "enter_root", "runtime_binds"]

DEVICES: Final = ("null", "zero", "random", "urandom")
_ROOT_SIZE: Final = 1 << 20
_DEV_SIZE: Final = 64 << 10


class Bind(msgspec.Struct, frozen=True):
    """A host path (file or directory) shown read-only at ``target`` inside the container.

    ``executable`` keeps exec rights (the Python runtime); data binds are ``noexec``.
    ``writable`` leaves the bind writable (never executable): only for a mount of the
    container's FUSE view, whose server checks and audits every write itself.
    """

    source: str
    target: str
    executable: bool = False
    writable: bool = False


class ViewPlan(msgspec.Struct, frozen=True):
    """Everything the container's root is made of, besides /proc, /dev and /tmp."""

    binds: tuple[Bind, ...]
    symlinks: tuple[tuple[str, str], ...] = ()
    tmp_size: int = 16 << 20

    @property
    def tmp_inodes(self) -> int:
        return max(1024, self.tmp_size // 16384)


def _restrict_mount(path: str, *, noexec: bool, writable: bool = False) -> None:
    """nosuid, nodev (and noexec, and read-only unless ``writable``) on the bind at ``path``
    and everything beneath it."""
    flags = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
    if not writable:
        flags |= sc.MOUNT_ATTR_RDONLY
    if noexec:
        flags |= sc.MOUNT_ATTR_NOEXEC
    sc.mount_setattr(path, flags, recursive=True)


def _here(path: str) -> str:
    """``/usr/lib`` -> ``./usr/lib``: paths in the new root, relative to the working directory."""
    return "." + path if path.startswith("/") else "./" + path


def _bind(source: int, target: str, *, executable: bool, writable: bool) -> None:
    if stat.S_ISDIR(os.fstat(source).st_mode):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    sc.mount(f"/proc/self/fd/{source}", target, None, sc.MS_BIND | sc.MS_REC)
    _restrict_mount(target, noexec=writable or not executable, writable=writable)


def build_root(stage: str, plan: ViewPlan, become: Callable[[], None]) -> None:
    """Mount a fresh root on ``stage``, fill it, and leave the working directory in it.

    Bind sources are opened first, with the host identity the child started with
    (they may sit beneath directories only that identity can search); then
    ``become()`` switches to the container's own uid, which must own every file the
    root is made of. The caller then calls :func:`enter_root`.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    options = f"size={_ROOT_SIZE},mode=0755,uid=0,gid=0"
    sc.mount("tmpfs", stage, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)
    opened: list[int] = []
    try:
        root = os.open(stage, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(root)
        opened.extend(os.open(bind.source, os.O_PATH | os.O_CLOEXEC) for bind in plan.binds)
        become()
        os.fchdir(root)
        _mount_tmp(plan)  # first: the runtime itself may live beneath /tmp on the host
        for bind, fd in zip(plan.binds, opened[1:], strict=True):
            _bind(fd, _here(bind.target), executable=bind.executable, writable=bind.writable)
    finally:
        for fd in opened:
            os.close(fd)
    for path, text in plan.symlinks:
        link = _here(path)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(text, link)
    _build_dev()
    os.makedirs("./proc")


def _mount_tmp(plan: ViewPlan) -> None:
    os.makedirs("./tmp")
    data = f"size={plan.tmp_size},nr_inodes={plan.tmp_inodes},mode=1777,uid=0,gid=0"
    sc.mount("tmpfs", "./tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, data)


def _build_dev() -> None:
    os.makedirs("./dev")
    options = f"size={_DEV_SIZE},mode=0755,uid=0,gid=0"
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC  # the four devices are binds of their own
    sc.mount("tmpfs", "./dev", "tmpfs", flags, options)
    for name in DEVICES:
        node = f"./dev/{name}"
        with open(node, "w"):
            pass
        sc.mount(f"/dev/{name}", node, None, sc.MS_BIND)
        sc.mount(None, node, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NOSUID | sc.MS_NOEXEC)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"./dev/{name}")
    sc.mount(None, "./dev", None, sc.MS_REMOUNT | sc.MS_RDONLY | flags)


def enter_root() -> None:
    """Mount /proc for the new PID namespace, pivot into the working directory, drop the old root.

    Must run as PID 1 of the container's PID namespace, after :func:`build_root`.
    """
    sc.mount("proc", "./proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)


def _mapped_library_dirs() -> Iterator[str]:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            path = line.rstrip("\n").partition("/")[2]
            if path and ".so" in path and not path.endswith(" (deleted)"):
                yield os.path.dirname("/" + path)


def _covered(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def runtime_binds(packages: Iterable[str]) -> tuple[tuple[Bind, ...], tuple[tuple[str, str], ...]]:
    """The Python runtime as binds at the same paths: prefixes, sys.path, loaded libraries.

    ``packages`` are package directories bound on their own, for packages that sit in a
    source tree (editable installs) rather than in site-packages: the tree itself
    (tests, version control) is never bound. Returns the binds and the top-level
    symlinks (``/lib -> usr/lib``) to recreate.
    """
    roots: list[str] = []

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if os.path.exists(real) and not _covered(real, roots):
            roots[:] = [r for r in roots if not _covered(r, [real])]
            roots.append(real)

    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        add(prefix)
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if os.path.isdir(real) and os.path.basename(real) in {"site-packages", "dist-packages"}:
            add(real)
    for package in packages:
        add(package)
    for directory in sorted(set(_mapped_library_dirs())):
        add(directory)
    if os.path.exists("/etc/ld.so.cache"):
        add("/etc/ld.so.cache")
    binds = tuple(Bind(root, root, executable=True) for root in sorted(roots))
    symlinks = tuple(
        (f"/{name}", os.readlink(f"/{name}"))
        for name in ("lib", "lib64", "lib32", "libx32", "bin", "sbin")
        if os.path.islink(f"/{name}")
    )
    return binds, symlinks
