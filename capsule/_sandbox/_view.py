"""Builds a container's root from scratch: tmpfs, read-only binds, /proc, /dev, /tmp, pivot_root.

Runs in the forked child, inside its new user and mount namespaces, before the uid
drop; it mounts only what the plan lists and decides nothing itself.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import msgspec

from capsule._sandbox import _syscalls as sc
from capsule.errors import SandboxError

__all__ = ["Bind", "ViewPlan", "build_root", "build_runtime_root", "enter_root"]

DEVICES: Final = ("null", "zero", "random", "urandom")
_ROOT_SIZE: Final = 1 << 20
_DEV_SIZE: Final = 64 << 10


class Bind(msgspec.Struct, frozen=True):
    """A host path (file or directory) shown read-only at ``target`` inside the container.

    ``executable`` keeps exec rights (the Python runtime); data binds are ``noexec``.
    ``writable`` leaves the bind writable (never executable): only for a mount of the
    container's FUSE view, whose server checks and audits every write itself.
    ``hidden`` mounts a directory as a read-only overlay of it instead of a bind, so that
    the mount table inside names neither the host directory nor its path within its file
    system (a bind shows that path; the overlay shows ``/`` and descriptor paths).
    ``layers`` are directories laid over a hidden mount's source, the first on top: files
    of the source rewritten for the place it is shown at.
    """

    source: str
    target: str
    executable: bool = False
    writable: bool = False
    hidden: bool = False
    layers: tuple[str, ...] = ()


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


def _open(sources: Iterable[Sequence[str]]) -> list[tuple[int, ...]]:
    """Each bind's source and then its layers, opened ``O_PATH`` (closed by the caller)."""
    opened: list[tuple[int, ...]] = []
    try:
        for paths in sources:
            fds: list[int] = []
            opened.append(())
            for path in paths:
                fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
                opened[-1] = tuple(fds)
    except BaseException:
        _close(opened)
        raise
    return opened


def _close(opened: Iterable[Iterable[int]]) -> None:
    for fds in opened:
        for fd in fds:
            os.close(fd)


def _bind(bind: Bind, fds: tuple[int, ...], target: str, empty: int) -> None:
    """Mount the source (``fds[0]``) at ``target``: a bind, or for a ``hidden`` directory an
    overlay of its layers (``fds[1:]``), of it and of the empty directory ``empty`` (an
    overlay without an upper layer needs two lower ones), each named by descriptor so that
    no host path reaches the mount's options."""
    source, layers = fds[0], fds[1:]
    directory = stat.S_ISDIR(os.fstat(source).st_mode)
    if directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    if bind.hidden and directory:
        if bind.writable:
            raise SandboxError(f"a hidden mount is read-only: {bind.target} cannot be writable")
        flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
        lower = "lowerdir=" + ":".join(f"/proc/self/fd/{fd}" for fd in (*layers, source, empty))
        sc.mount("capsule", target, "overlay", flags, lower)
    else:
        sc.mount(f"/proc/self/fd/{source}", target, None, sc.MS_BIND | sc.MS_REC)
    _restrict_mount(target, noexec=bind.writable or not bind.executable, writable=bind.writable)


def _fill(
    binds: Sequence[Bind], opened: Sequence[tuple[int, ...]], symlinks: Iterable[tuple[str, str]]
) -> None:
    """Mount ``binds`` (their sources already ``opened``) and make ``symlinks`` beneath the
    working directory; creates ./proc (empty until /proc is mounted on it), the empty
    layer of every hidden mount."""
    os.makedirs("./proc")
    empty = os.open("./proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for bind, fds in zip(binds, opened, strict=True):
            _bind(bind, fds, _here(bind.target), empty)
    finally:
        os.close(empty)
    for path, text in symlinks:
        link = _here(path)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(text, link)


def build_root(
    stage: str, plan: ViewPlan, sources: Sequence[Sequence[str]], become: Callable[[], None]
) -> int:
    """Mount a fresh root on ``stage``, fill it, and return a descriptor of it (``O_PATH``).

    ``sources`` are, for each of the plan's binds in order, its source and its layers
    (the plan's own are blank: see ``SpawnRequest``). They are opened first, with the
    host identity the child started with (they may sit beneath directories only that
    identity can search); then ``become()`` switches to the container's own uid, which
    must own every file the root is made of. The process that is to live in the root
    then changes into it and calls :func:`enter_root`.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    options = f"size={_ROOT_SIZE},mode=0755,uid=0,gid=0"
    sc.mount("tmpfs", stage, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)
    root = os.open(stage, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    opened: list[tuple[int, ...]] = [(root,)]
    try:
        if len(sources) != len(plan.binds):
            raise SandboxError(f"{len(sources)} sources for {len(plan.binds)} binds")
        opened += _open(sources)
        become()
        os.fchdir(root)
        _mount_tmp(plan)  # first: the runtime itself may live beneath /tmp on the host
        _fill(plan.binds, opened[1:], plan.symlinks)
        _build_dev()
        return os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        _close(opened)


def build_runtime_root(
    where: str, binds: Sequence[Bind], symlinks: Sequence[tuple[str, str]]
) -> None:
    """The zygote's own root, mounted on ``where`` in a private mount namespace: only the
    runtime (``binds``), /dev's four devices and, once :func:`enter_root` runs, /proc.

    The host's root stays the caller's until :func:`enter_root` pivots into this one.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    options = f"size={_ROOT_SIZE},mode=0755,uid=0,gid=0"
    sc.mount("tmpfs", where, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)
    opened = _open((bind.source, *bind.layers) for bind in binds)
    try:
        os.chdir(where)
        _fill(binds, opened, symlinks)
    finally:
        _close(opened)
    _build_dev()


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
