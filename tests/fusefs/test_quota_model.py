"""THREATS.md item 9 as a property: whatever sequence of creates, writes, truncations,
links, renames, exchanges and removals a container makes through a real mount, with files
kept open after they are unlinked, the quota counts exactly what the host holds for the
view, and the host never holds more than the quota.

What the host holds is judged on the host (tests.fusefs._support.held_on_host): the
apparent sizes of the regular files beneath the backing directory and the number of its
files, directories and symlinks, plus the files unlinked but still open in the view
server. For a cow mount over a volume that already holds files, that is its upper layer
(copies of the volume's files, whiteouts, its own files). The quota's view is the
server's own count, shown in /capsule/mounts and statfs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Final

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fusefs import MountKind, ServerProcess, _sys
from tests.fusefs._support import held_on_host, mount, read, view, wait_until

QUOTA_BYTES: Final = 8192
QUOTA_INODES: Final = 6
#: a small tree, so that renames meet existing names, full and empty directories
_paths = st.sampled_from(("a", "b", "d", "e", "d/a", "d/b", "e/a"))
_dirs = st.sampled_from(("d", "e", "d/e", "e/d"))
_sizes = st.integers(min_value=0, max_value=3000)


def _tolerated(action: Callable[..., object], *args: Any) -> None:
    """Do ``action``; the file system may refuse it (EDQUOT, ENOTEMPTY, EISDIR, ...)."""
    with contextlib.suppress(OSError):  # what is held after it matters, refused or not
        action(*args)


class _QuotaMachine(RuleBasedStateMachine):
    mountpoint: ClassVar[Path]
    scratch: ClassVar[Path]
    runs: ClassVar[list[int]]

    kind: ClassVar[MountKind]

    def __init__(self) -> None:
        super().__init__()
        self.runs.append(len(self.runs))
        self.volume = self.scratch / f"volume{len(self.runs)}"
        self.volume.mkdir()
        self.layer, self.opened = self.volume, self.volume  # what the host holds for the view
        options: dict[str, Any] = {}
        if self.kind is MountKind.COW:  # a volume with files of its own beneath the layer
            upper = self.scratch / f"upper{len(self.runs)}"
            self.layer, self.opened = upper / "changes", upper / "merged"
            options["upper"] = upper
            (self.volume / "d").mkdir()
            (self.volume / "e").mkdir()
            (self.volume / "a").write_bytes(b"v" * 3000)
            (self.volume / "d" / "a").write_bytes(b"v" * 2000)
        spec = view(
            mount(
                "/w",
                self.kind,
                self.volume,
                quota_bytes=QUOTA_BYTES,
                quota_inodes=QUOTA_INODES,
                **options,
            )
        )
        self.server = ServerProcess(spec, str(self.mountpoint))
        self.w = self.mountpoint / "w"
        self.held: list[int] = []  # descriptors of files unlinked while open

    def teardown(self) -> None:
        try:
            for fd in self.held:
                os.close(fd)
        finally:
            self.server.close()
            shutil.rmtree(self.volume)
            if self.layer != self.volume:
                shutil.rmtree(self.layer.parent)

    # -- what a container does ------------------------------------------------------------

    @initialize()
    def tree(self) -> None:
        if self.kind is MountKind.COW:
            return  # the volume's own
        os.mkdir(self.w / "d")
        os.mkdir(self.w / "e")
        self.write("d/a", 0, 1000)

    @rule(path=_paths, offset=_sizes, length=_sizes)
    def write(self, path: str, offset: int, length: int) -> None:
        try:
            fd = os.open(self.w / path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            _tolerated(os.pwrite, fd, b"x" * length, offset)
        finally:
            os.close(fd)

    @rule(path=_paths, size=_sizes)
    def truncate(self, path: str, size: int) -> None:
        _tolerated(os.truncate, self.w / path, size)

    @rule(path=_dirs)
    def mkdir(self, path: str) -> None:
        _tolerated(os.mkdir, self.w / path)

    @rule(path=st.sampled_from(("b", "d/b")))
    def symlink(self, path: str) -> None:
        _tolerated(os.symlink, "a", self.w / path)

    @rule(path=_paths)
    def unlink(self, path: str) -> None:
        _tolerated(os.unlink, self.w / path)

    @rule(path=_dirs)
    def rmdir(self, path: str) -> None:
        _tolerated(os.rmdir, self.w / path)

    @rule(source=_paths, to=_paths)
    def rename(self, source: str, to: str) -> None:
        _tolerated(os.rename, self.w / source, self.w / to)

    @rule(source=_paths, to=_paths)
    def exchange(self, source: str, to: str) -> None:
        (old, old_name), (new, new_name) = (os.path.split(self.w / p) for p in (source, to))
        try:
            old_fd, new_fd = os.open(old, os.O_PATH), os.open(new, os.O_PATH)
        except OSError:
            return
        try:
            exchange = _sys.RENAME_EXCHANGE
            _tolerated(
                _sys.renameat2, old_fd, old_name.encode(), new_fd, new_name.encode(), exchange
            )
        finally:
            os.close(old_fd)
            os.close(new_fd)

    @rule(source=_dirs, to=_dirs)
    def rename_directory(self, source: str, to: str) -> None:
        _tolerated(os.rename, self.w / source, self.w / to)

    @rule(source=_paths, to=_paths)
    def link(self, source: str, to: str) -> None:
        _tolerated(os.link, self.w / source, self.w / to)

    @precondition(lambda self: len(self.held) < 4)
    @rule(path=_paths)
    def open_and_unlink(self, path: str) -> None:
        try:
            fd = os.open(self.w / path, os.O_RDWR)
        except OSError:
            return
        self.held.append(fd)
        _tolerated(os.unlink, self.w / path)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), offset=_sizes, length=_sizes)
    def write_held(self, data: st.DataObject, offset: int, length: int) -> None:
        fd = data.draw(st.sampled_from(self.held))
        _tolerated(os.pwrite, fd, b"y" * length, offset)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def close_held(self, data: st.DataObject) -> None:
        fd = data.draw(st.sampled_from(self.held))
        self.held.remove(fd)
        os.close(fd)

    # -- what must hold after each step ---------------------------------------------------

    def _counted(self) -> tuple[int, int]:
        line = read(self.mountpoint / "capsule" / "mounts").decode().split()
        fields = dict(f.split("=") for f in line[4:])
        return int(fields["bytes"].split("/")[0]), int(fields["inodes"].split("/")[0])

    @invariant()
    def the_host_never_holds_more_than_the_quota(self) -> None:
        size, inodes = held_on_host(self.layer, self.server.process.pid, self.opened)
        assert size <= QUOTA_BYTES
        assert inodes <= QUOTA_INODES

    @invariant()
    def the_quota_counts_what_the_host_holds(self) -> None:
        # The kernel tells the server of a close, or of a node it forgot, asynchronously:
        # what the host frees may reach the count a moment later. The count is never below
        # what the host holds, and agrees with it once the server has heard.
        def agree() -> bool:
            counted = self._counted()
            held = held_on_host(self.layer, self.server.process.pid, self.opened)
            assert held[0] <= counted[0], f"the host holds {held}, the quota counts {counted}"
            assert held[1] <= counted[1], f"the host holds {held}, the quota counts {counted}"
            room = os.statvfs(self.w)  # what df shows the container: the room left
            left = ((QUOTA_BYTES - counted[0]) // 4096, QUOTA_INODES - counted[1])
            return counted == held and (room.f_bavail, room.f_favail) == left

        wait_until(agree, what="the quota's count to agree with what the host holds")


@pytest.mark.parametrize("kind", [MountKind.RW, MountKind.COW])
def test_the_quota_counts_what_the_host_holds(
    mountpoint: Path, tmp_path: Path, kind: MountKind
) -> None:
    machine = type(
        "QuotaMachine",
        (_QuotaMachine,),
        {"mountpoint": mountpoint, "scratch": tmp_path, "runs": [], "kind": kind},
    )
    # each example mounts a view of a fresh volume: a few dozen keep it within seconds
    run = settings(max_examples=30, stateful_step_count=30, deadline=None)
    run_state_machine_as_test(machine, settings=run)
