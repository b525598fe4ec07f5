"""View specifications: the contract between capsule and fusefs."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from fusefs import MountKind, MountSpec, ViewSpec, ViewSpecError


def view(*mounts: MountSpec) -> ViewSpec:
    return ViewSpec(owner="spellcheck", mounts=mounts)


def test_a_valid_view_round_trips_through_msgpack() -> None:
    spec = view(
        MountSpec(view_path="/data/words", kind=MountKind.RO, backing="/srv/app/words"),
        MountSpec(view_path="/state", kind=MountKind.PRIVATE, backing="/srv/st", quota_bytes=10),
        MountSpec(view_path="/notes", kind=MountKind.COW, backing="/srv/n", upper="/srv/up"),
    ).validate()
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=ViewSpec)
    assert again == spec
    assert [m.writable for m in spec.mounts] == [False, True, True]


@pytest.mark.parametrize(
    ("mounts", "fragment"),
    [
        ([MountSpec(view_path="data", kind=MountKind.RO, backing="/b")], "must be absolute"),
        ([MountSpec(view_path="/a/../b", kind=MountKind.RO, backing="/b")], "no '..'"),
        ([MountSpec(view_path="/a", kind=MountKind.RO, backing="b")], "backing directory"),
        ([MountSpec(view_path="/", kind=MountKind.RO, backing="/b")], "reserved"),
        ([MountSpec(view_path="/capsule", kind=MountKind.RO, backing="/b")], "reserved"),
        (
            [
                MountSpec(view_path="/a", kind=MountKind.RO, backing="/b"),
                MountSpec(view_path="/a", kind=MountKind.RO, backing="/c"),
            ],
            "mounted twice",
        ),
        (
            [
                MountSpec(view_path="/a", kind=MountKind.RO, backing="/b"),
                MountSpec(view_path="/a/b", kind=MountKind.RW, backing="/c"),
            ],
            "overlaps the mount at '/a'",
        ),
        ([MountSpec(view_path="/a", kind=MountKind.COW, backing="/b")], "upper directory"),
        (
            [MountSpec(view_path="/a", kind=MountKind.RO, backing="/b", upper="/u")],
            "upper directory",
        ),
        ([MountSpec(view_path="/a", kind=MountKind.RO, backing="/b", quota_bytes=1)], "writable"),
        ([MountSpec(view_path="/a", kind=MountKind.RW, backing="/b", quota_inodes=-1)], ">= 0"),
    ],
)
def test_inconsistent_views_are_refused_with_the_mount_named(
    mounts: list[MountSpec], fragment: str
) -> None:
    with pytest.raises(ViewSpecError, match="view of 'spellcheck', mount") as info:
        view(*mounts).validate()
    assert fragment in str(info.value)


def test_fusefs_does_not_import_capsule() -> None:
    code = (
        "import sys, fusefs; print(sorted(m for m in sys.modules if m.split('.')[0] == 'capsule'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"
