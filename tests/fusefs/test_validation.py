"""Spec validation names the exact mount (and view) broken; control messages round-trip.

Pure: nothing is mounted.
"""

# Token ids in these tests are names that audit lines carry, not secrets.
# ruff: noqa: S106

from __future__ import annotations

import re

import msgspec
import pytest

from fusefs import (
    Denied,
    MountKind,
    MountSpec,
    Revoke,
    ServerProcess,
    ViewSpec,
    ViewSpecError,
    decode_from_server,
    encode,
)


def _spec(view_path: str = "/data", kind: MountKind = MountKind.RW, **options: object) -> MountSpec:
    options.setdefault("backing", "/srv/volume")
    return MountSpec(view_path=view_path, kind=kind, **options)  # type: ignore[arg-type]


def _view(*mounts: MountSpec, **options: object) -> ViewSpec:
    return ViewSpec(owner="feat", mounts=mounts, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mounts", "named", "rule"),
    [
        ((_spec("data"),), "data", "view path 'data' must be absolute"),
        ((_spec("/a/../b"),), "/a/../b", "must be absolute and normalised"),
        ((_spec(backing="srv/volume"),), "/data", "backing directory 'srv/volume'"),
        ((_spec(backing="/srv/../etc"),), "/data", "backing directory '/srv/../etc'"),
        ((_spec(backing="/srv/vol\x00ume"),), "/data", "backing directory"),
        ((_spec("/"),), "/", "reserved"),
        ((_spec("/capsule"),), "/capsule", "reserved"),
        ((_spec("/capsule/x"),), "/capsule/x", "reserved"),
        ((_spec("/data"), _spec("/data")), "/data", "mounted twice"),
        ((_spec("/data"), _spec("/data/inner")), "/data/inner", "overlaps the mount at '/data'"),
        ((_spec("/data/inner"), _spec("/data")), "/data", "overlaps the mount at '/data/inner'"),
        ((_spec(kind=MountKind.COW),), "/data", "upper directory is needed by cow mounts only"),
        ((_spec(upper="/srv/upper"),), "/data", "upper directory is needed by cow mounts only"),
        ((_spec(kind=MountKind.COW, upper="up"),), "/data", "upper directory 'up'"),
        ((_spec(quota_bytes=-1),), "/data", "quota_bytes needs a writable mount"),
        ((_spec(quota_inodes=-1),), "/data", "quota_inodes needs a writable mount"),
        ((_spec(kind=MountKind.RO, quota_bytes=10),), "/data", "quota_bytes needs a writable"),
        ((_spec(kind=MountKind.RO, quota_inodes=10),), "/data", "quota_inodes needs a writable"),
    ],
)
def test_a_broken_mount_is_named_in_the_error(
    mounts: tuple[MountSpec, ...], named: str, rule: str
) -> None:
    with pytest.raises(ViewSpecError, match=re.escape(rule)) as caught:
        _view(*mounts).validate()
    message = str(caught.value)
    assert f"view of 'feat', mount {named!r}" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "mounts"])
def test_an_invalid_info_file_name_is_named(name: str) -> None:
    with pytest.raises(ViewSpecError, match=re.escape(f"/capsule/{name} is not a valid name")):
        _view(_spec(), info={name: "x"}).validate()


def test_valid_views_pass_unchanged() -> None:
    view = _view(
        _spec("/data", MountKind.RO),
        _spec("/work", quota_bytes=0, quota_inodes=0),
        _spec("/cache", MountKind.COW, upper="/srv/upper"),
        _spec("/data2", MountKind.PRIVATE, backing="/srv/private/"),
        info={"feature": "feat\n"},
    )
    assert view.validate() is view


def test_the_server_process_refuses_an_invalid_view_before_starting() -> None:
    with pytest.raises(ViewSpecError, match="mounted twice"):
        ServerProcess(_view(_spec(), _spec()), "/nonexistent")


def test_grant_names_the_capability_for_audit() -> None:
    assert _spec(kind=MountKind.RO).grant == "fs:read:/data/"
    assert _spec().grant == "fs:read,write:/data/"
    assert _spec(capability="fs:read:/vol/").grant == "fs:read:/vol/"


def test_control_messages_round_trip() -> None:
    denied = Denied("write", "/w/f", "/w", "fs:write:/w/", "over its quota", token="t1", uid=7)
    assert decode_from_server(encode(denied)) == denied
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'revoke'"):
        decode_from_server(encode(Revoke(tokens=("t1",))))  # only the owner sends it
