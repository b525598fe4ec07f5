"""The file-system server process of one view: set up, mount, serve, answer the owner.

Runs in a process of its own (pyfuse3 hosts one mount per process), started by the
view's owner. It never unmounts: the owner does, so a server that dies or hangs never
leaves the owner waiting on it. Copy-on-write mounts are overlayfs mounts in the
server's private mount namespace, so nothing but the server ever sees them and they
go when it does.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import signal
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import pyfuse3
import trio

from fusefs import _sys
from fusefs._control import (
    FromServer,
    Mounted,
    Probe,
    ProbeReply,
    Rekey,
    Revoke,
    Shutdown,
    decode_to_server,
    encode,
)
from fusefs._cow import Layer, whiteout
from fusefs._descriptors import capacity_for
from fusefs._lifecycle import connection_of
from fusefs._nodes import NodeTable
from fusefs._ops import ViewOperations
from fusefs._policy import ViewPolicy
from fusefs._rekey import rekey
from fusefs._revocation import Closer
from fusefs._spec import MountKind, ViewSpec

__all__ = ["Confine", "serve"]

#: called once the view is mounted with the directories the server needs (a path, or the
#: descriptor the server serves a mount from) and whether it writes beneath each; it may
#: restrict the process (Landlock) to them. Given by the owner.
Confine = Callable[[Sequence[tuple[str | int, bool]]], None]

#: the open-file limit the server asks for: descriptors of known files (at most 4,096, see
#: _descriptors) and the files the container holds open through the view (a container's
#: own limit is 256 unless its policy says otherwise). Below common hard limits (Debian's
#: 1,048,576 for services; 20,000 here), so raising it needs no CAP_SYS_RESOURCE.
_NOFILE: Final = 16384
_FLUSH_INTERVAL: Final = 1.0
#: the mount's readahead: libfuse 3's largest read request (max_pages 256), where the
#: kernel's default 128 KiB would cut a sequential read into eight times the round trips
_READAHEAD_KB: Final = 1024


class _Server:
    def __init__(
        self, view: ViewSpec, mountpoint: str, control: socket.socket, *, descriptors: int
    ) -> None:
        self.view = view
        self.mountpoint = mountpoint
        self.control = control
        self.dropped = 0
        self.policy = ViewPolicy(view, self.send)
        self.nodes = NodeTable(descriptors)
        self.ops = ViewOperations(self.policy, self.nodes)
        self.closer = Closer(self.policy, self.nodes, self.send)
        self.readahead: int | None = None  # the mount's read_ahead_kb, opened before confine
        self.info = dict(view.info)  # the /capsule/ files' text, as Rekey updates it

    def send(self, message: FromServer) -> None:
        """Report to the owner without ever blocking a request handler."""
        try:
            self.control.send(encode(message), socket.MSG_DONTWAIT)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            self.dropped += 1

    # -- building the view --------------------------------------------------------------

    def _parent_of(self, view_path: str) -> tuple[int, bytes]:
        """Create the synthetic directories down to ``view_path``; its parent and name."""
        parts = [os.fsencode(p) for p in view_path.strip("/").split("/")]
        parent = self.nodes.root
        for part in parts[:-1]:
            known = (parent.children or {}).get(part)
            parent = self.nodes[known] if known else self.nodes.synthetic(parent.ino, part)
        return parent.ino, parts[-1]

    def build(self, roots: dict[int, int]) -> None:
        for mount in self.policy.mounts:
            parent, name = self._parent_of(mount.spec.view_path)
            fd = roots[mount.index]
            if mount.spec.kind is not MountKind.COW:
                mount.dev = os.fstat(fd).st_dev
            self.nodes.mount_root(parent, name, mount, fd)
        info = self.nodes.synthetic(self.nodes.root.ino, b"capsule")
        for file_name in sorted(self.info):
            content = functools.partial(self._info_text, file_name)
            self.nodes.info(info.ino, os.fsencode(file_name), content)
        self.nodes.info(info.ino, b"mounts", self._mounts_text)

    def _info_text(self, name: str) -> bytes:
        return self.info[name].encode()

    def _mounts_text(self) -> bytes:
        lines = []
        for mount in self.policy.mounts:
            spec = mount.spec
            mode = "rw" if spec.writable else "ro"
            quota = f" bytes={mount.usage_bytes}/{spec.quota_bytes or '-'}"
            quota += f" inodes={mount.usage_inodes}/{spec.quota_inodes or '-'}"
            lines.append(f"{spec.view_path} {spec.kind.value} {mode} {mount.status}{quota}\n")
        return "".join(lines).encode()

    # -- serving ------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fuse, nursery.cancel_scope)
            nursery.start_soon(self._raise_readahead)
            nursery.start_soon(self._control, nursery)
            nursery.start_soon(self._flush)
            nursery.start_soon(self.closer.expire)

    async def _fuse(self, scope: trio.CancelScope) -> None:
        await pyfuse3.main()
        scope.cancel()

    async def _raise_readahead(self) -> None:
        """Set the mount's readahead once the kernel has applied the INIT reply, which caps
        it at the 128 KiB it offered; any request answered after INIT proves that."""
        fd, self.readahead = self.readahead, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # ENOENT: the lookup was answered
                path = os.path.join(self.mountpoint, ".fusefs-readahead")
                await trio.to_thread.run_sync(os.stat, path, abandon_on_cancel=True)
            with contextlib.suppress(OSError):
                os.write(fd, str(_READAHEAD_KB).encode())
        finally:
            os.close(fd)

    async def _control(self, nursery: trio.Nursery) -> None:
        sock = trio.socket.from_stdlib_socket(self.control)
        while True:
            data = await sock.recv(1 << 16)
            if not data:
                break
            message = decode_to_server(data)
            if isinstance(message, Shutdown):
                break
            if isinstance(message, Revoke):  # answered once the kernel's caches are dropped
                nursery.start_soon(self.closer.revoke, message.tokens, message.reason, message.seq)
            elif isinstance(message, Probe):
                nursery.start_soon(self._probe, message.seq)
            elif isinstance(message, Rekey):
                self.send(rekey(self.policy, self.info, message, now=time.time()))
                self.closer.reschedule()
        self.policy.flush()
        pyfuse3.terminate()
        nursery.cancel_scope.cancel()

    async def _probe(self, seq: int) -> None:
        """A lookup through the kernel, from a worker thread: proves requests are served."""
        path = os.path.join(self.mountpoint, "capsule", f".probe-{seq}")
        try:
            await trio.to_thread.run_sync(os.stat, path, abandon_on_cancel=True)
        except FileNotFoundError:
            pass  # the answer a served lookup of that name gets
        except OSError:
            return  # ENOTCONN, ECONNABORTED: not served; the missing reply says so
        self.send(ProbeReply(seq=seq))

    async def _flush(self) -> None:
        while True:
            await trio.sleep(_FLUSH_INTERVAL)
            self.policy.flush()


# -- set-up helpers ----------------------------------------------------------------------


def _raise_open_file_limit(owner: str) -> tuple[int, str]:
    """Raise RLIMIT_NOFILE to _NOFILE, or as far as the hard limit allows (raising that
    needs CAP_SYS_RESOURCE). Returns the limit in force, and what it means when it is
    lower (for the owner to log: the server's own output may be the owner's terminal)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, max(hard, _NOFILE)))
    except (ValueError, OSError) as exc:
        limit = max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # up to hard: always allowed
        capacity = capacity_for(limit)
        notice = (
            f"fusefs view of {owner}: the open-file limit stays at {limit}, not {_NOFILE}"
            f" ({exc}; raising the hard limit needs CAP_SYS_RESOURCE): the server keeps at"
            f" most {capacity} descriptors of known files open and reopens the others when"
            f" they are used, and the container can hold about {limit - capacity} files open"
            " through the view at once (EMFILE beyond)"
        )
        return limit, notice
    return _NOFILE, ""


def _open_dir(path: str) -> int:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):  # pragma: no cover - O_DIRECTORY ensures it
        os.close(fd)
        raise NotADirectoryError(path)
    return fd


def _open_readahead(connection: int | None) -> int | None:
    """The FUSE mount's ``read_ahead_kb``, opened for writing now, while Landlock allows it;
    None where it cannot be (not root, no sysfs): the kernel's default then stays."""
    if connection is None:
        return None
    bdi = f"{connection >> 20}:{connection & 0xFFFFF}"  # the mount's major:minor
    try:
        return os.open(f"/sys/class/bdi/{bdi}/read_ahead_kb", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _checked_dir(fd: int, view: ViewSpec, index: int) -> int:
    """A directory descriptor the owner gave for mount ``index``, checked to be one."""
    if not 0 <= index < len(view.mounts) or not stat.S_ISDIR(os.fstat(fd).st_mode):
        raise ValueError(f"view of {view.owner!r}: descriptor {fd} is not a directory of a mount")
    return fd


def _overlay_option(path: str) -> str:
    if any(c in path for c in ",:\\"):
        raise ValueError(f"{path!r}: a copy-on-write directory must not contain ',', ':' or '\\'")
    return path


def _enter_private_namespace() -> None:
    """A mount namespace of the server's own (and a user namespace when not root)."""
    if os.geteuid() == 0:
        _sys.unshare(_sys.CLONE_NEWNS)
    else:
        uid, gid = os.geteuid(), os.getegid()
        _sys.unshare(_sys.CLONE_NEWUSER | _sys.CLONE_NEWNS)
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"0 {uid} 1"),
            ("gid_map", f"0 {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
                f.write(text)
    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE, "")


def _mount_overlays(
    view: ViewSpec, roots: dict[int, int], lowers: dict[int, int], uppers: dict[int, int]
) -> list[str]:
    """Mount each cow mount's overlay privately; returns the merged directories, and puts
    a descriptor of each one's upper layer (``changes/``, which its quota counts) in
    ``uppers``.

    A lower layer the owner gave as a descriptor is cloned (``open_tree``) before the
    server leaves the owner's mount namespace, since overlayfs takes layers from its own
    namespace only, and named to it as ``/proc/self/fd/N``. Without root (no open_tree), it
    is named by its backing path, which must lead to that same directory just before the
    mount and just after it.
    """
    merged_dirs: list[str] = []
    cows = [(i, m) for i, m in enumerate(view.mounts) if m.kind is MountKind.COW]
    if not cows:
        return merged_dirs
    root = os.geteuid() == 0
    clones = {i: _sys.open_tree(fd) for i, fd in lowers.items()} if root else {}
    _enter_private_namespace()
    for index, spec in cows:
        assert spec.upper is not None  # noqa: S101 - validated: cow mounts have an upper
        changes, work, merged = (os.path.join(spec.upper, d) for d in ("changes", "work", "merged"))
        for directory in (changes, work, merged):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        lower = f"/proc/self/fd/{clones[index]}" if index in clones else spec.backing
        options = (
            f"lowerdir={_overlay_option(lower)},upperdir={_overlay_option(changes)},"
            f"workdir={_overlay_option(work)}"
        )
        if not root:
            options += ",userxattr"
        if index in lowers and not root:
            _same_directory(spec.backing, lowers[index])
        _sys.mount("overlay", merged, "overlay", 0, options)
        if index in lowers and not root:
            _same_directory(spec.backing, lowers[index])
        roots[index] = _open_dir(merged)
        uppers[index] = _open_dir(changes)
        merged_dirs.append(merged)
    for fd in clones.values():  # the overlays hold their layers now
        os.close(fd)
    return merged_dirs


def _same_directory(path: str, fd: int) -> None:
    """Refuse a backing path that no longer leads, without a link, to directory ``fd``."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    found = _sys.openat2(_sys.AT_FDCWD, os.fsencode(path), flags, _sys.RESOLVE_NO_SYMLINKS)
    try:
        same = os.path.samestat(os.fstat(found), os.fstat(fd))
    finally:
        os.close(found)
    if not same:
        raise OSError(errno.ESTALE, f"{path} no longer leads to the directory the owner gave")


def _usage(policy: ViewPolicy, view: ViewSpec, roots: dict[int, int]) -> None:
    """What each mount with a quota already holds (for cow: its upper layer); a mount
    without one is not walked, so a large volume costs nothing at start."""
    for mount in policy.mounts:
        spec = mount.spec
        if not spec.writable or (spec.quota_bytes is None and spec.quota_inodes is None):
            continue
        # from the root descriptor itself: fwalk does not walk a /proc/self/fd/N link
        # when it must not follow symlinks, and would find nothing
        top, root_fd = (
            (os.path.join(spec.upper, "changes"), None) if spec.upper else (".", roots[mount.index])
        )
        seen: set[tuple[int, int]] = set()
        for _, dirs, files, dir_fd in os.fwalk(top, follow_symlinks=False, dir_fd=root_fd):
            for name in files + dirs:
                with contextlib.suppress(OSError):
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if whiteout(st):  # a cow layer's: each counts (fusefs._cow)
                        mount.usage_inodes += 1
                        continue
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    mount.usage_inodes += 1
                    if stat.S_ISREG(st.st_mode):
                        mount.usage_bytes += st.st_size


def _options(view: ViewSpec) -> set[str]:
    options = set(pyfuse3.default_options) - {"default_permissions"}  # the policy decides
    options |= {f"fsname=capsule-{view.owner}", "subtype=capsule", "nosuid", "nodev"}
    if os.geteuid() == 0:
        options.add("allow_other")  # the container runs as a uid of its own
    return options


def serve(
    view: ViewSpec,
    mountpoint: str,
    control: socket.socket,
    *,
    confine: Confine | None = None,
    roots: Mapping[int, int] | None = None,
) -> None:
    """Mount ``view`` at ``mountpoint`` and serve it until the owner says stop or goes away.

    ``control`` is this server's end of a SEQPACKET socket to the owner. Reports
    :class:`~fusefs._control.Mounted` once the view is in place. Never unmounts.
    ``roots`` are directories the owner opened (and checked), by mount index: those mounts
    are served from them (a cow mount's lower layer too), and their backing paths are never
    opened (they only name the mount); the server owns the descriptors from here.
    """
    view.validate()
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    limit, notice = _raise_open_file_limit(view.owner)
    server = _Server(view, mountpoint, control, descriptors=capacity_for(limit))
    server.policy.callers = frozenset({*server.policy.callers, os.geteuid()})  # its own probes
    given = {index: _checked_dir(fd, view, index) for index, fd in (roots or {}).items()}
    lowers = {i: fd for i, fd in given.items() if view.mounts[i].kind is MountKind.COW}
    opened: dict[int, int] = {i: fd for i, fd in given.items() if i not in lowers}
    for index, spec in enumerate(view.mounts):
        if index in given:
            continue
        if spec.kind is MountKind.PRIVATE:
            os.makedirs(spec.backing, mode=0o700, exist_ok=True)
        if spec.kind is not MountKind.COW:
            opened[index] = _open_dir(spec.backing)
    pyfuse3.init(server.ops, mountpoint, _options(view))
    connection = connection_of(mountpoint)
    server.readahead = _open_readahead(connection)
    uppers: dict[int, int] = {}
    merged = _mount_overlays(view, opened, lowers, uppers)
    server.ops.quotas.layers = {i: Layer(fd) for i, fd in uppers.items()}
    for fd in lowers.values():  # the overlay holds its lower layer now
        os.close(fd)
    needed: list[tuple[str | int, bool]] = [
        (opened[i] if i in given else m.backing, m.writable)
        for i, m in enumerate(view.mounts)
        if m.kind is not MountKind.COW
    ]
    server.build(opened)
    _usage(server.policy, view, opened)
    if confine is not None:
        needed += [(path, True) for path in merged]
        needed += [(m.upper, True) for m in view.mounts if m.upper]
        confine(needed)
    server.send(
        Mounted(pid=os.getpid(), connection=connection, mountpoint=mountpoint, notice=notice)
    )
    try:
        trio.run(server.run)
    finally:
        pyfuse3.close(unmount=False)
        server.nodes.close()
        for layer in server.ops.quotas.layers.values():
            layer.close()
