"""The directories behind volume grants: held from when the app opens, checked before each mount.

No container here: each case rearranges a real volume on disk between ``GrantDirs.open()`` and
``directory()``, and reads what the refusal says. ``tests/security/test_grants.py`` runs the
same rearrangements from inside real containers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capsule import FeatureStartError, load_app
from capsule._manifest import App, MountGrant
from capsule._supervisor._grantdirs import GrantDirs
from capsule.testing import TestApp

_POLICY = {
    "fs": [
        {"path": "/vol", "volume": "work2", "mode": "ro"},
        {"path": "/sub", "volume": "work2/sub/inner", "mode": "ro"},
    ]
}


@pytest.fixture
def app(tmp_path: Path) -> App:
    test_app = TestApp(tmp_path / "app")
    test_app.volume("work2", {"sub/inner/marker.txt": "inner", "other/inner/x.txt": "x"})
    test_app.feature("s", policy=_POLICY)
    return load_app(test_app.write())


@pytest.fixture
def dirs(app: App) -> Iterator[GrantDirs]:
    held = GrantDirs(app)
    held.open()
    yield held
    held.close()


def _grant(app: App, view: str) -> MountGrant:
    return next(g for g in app.grants["s"].mounts if g.view == view)


def test_an_unchanged_grant_is_the_directory_held_since_the_app_opened(
    app: App, dirs: GrantDirs
) -> None:
    fd = dirs.directory("s", _grant(app, "/sub"))
    assert os.path.samestat(os.fstat(fd), os.stat(app.volumes["work2"] / "sub" / "inner"))
    assert os.listdir(f"/proc/self/fd/{fd}") == ["marker.txt"]
    volume = dirs.directory("s", _grant(app, "/vol"))
    assert os.path.samestat(os.fstat(volume), os.stat(app.volumes["work2"]))


def _swap_sub_for_link(volume: Path) -> None:
    (volume / "sub").rename(volume / "sub-away")
    (volume / "sub").symlink_to("sub-away")  # even a link that stays inside the volume


def _swap_inner_for_file(volume: Path) -> None:
    (volume / "sub" / "inner").rename(volume / "inner-away")
    (volume / "sub" / "inner").write_text("not a directory", encoding="utf-8")


def _swap_inner_for_another(volume: Path) -> None:
    (volume / "sub" / "inner").rename(volume / "inner-away")
    (volume / "other" / "inner").rename(volume / "sub" / "inner")


def _remove_inner(volume: Path) -> None:
    (volume / "sub" / "inner").rename(volume / "inner-away")


@pytest.mark.parametrize(
    ("swap", "changed"),
    [
        (_swap_sub_for_link, "a symbolic link now stands on its path"),
        (_swap_inner_for_file, "something that is not a directory now stands on its path"),
        (_swap_inner_for_another, "its path now leads to another directory"),
        (_remove_inner, "a directory on its path was moved or removed"),
    ],
)
def test_a_grant_whose_path_leads_elsewhere_refuses_naming_feature_grant_and_change(
    app: App, dirs: GrantDirs, swap: Callable[[Path], None], changed: str
) -> None:
    swap(app.volumes["work2"])
    with pytest.raises(FeatureStartError) as refused:
        dirs.directory("s", _grant(app, "/sub"))
    message = str(refused.value)
    assert message.startswith(
        "feature 's': refused to mount the ro grant of /sub (volume work2/sub/inner, "
        f"{app.volumes['work2'] / 'sub' / 'inner'}): "
    )
    assert changed in message
    assert dirs.directory("s", _grant(app, "/vol")) >= 0  # the volume itself still mounts


def test_a_volume_moved_on_the_host_refuses_and_its_grants_with_it(
    app: App, dirs: GrantDirs
) -> None:
    volume = app.volumes["work2"]
    volume.rename(volume.with_name("work2-moved"))
    volume.mkdir()
    for view in ("/vol", "/sub"):
        with pytest.raises(FeatureStartError, match=f"grant of {view} .*another directory"):
            dirs.directory("s", _grant(app, view))


def test_a_grant_gone_before_the_app_opened_never_mounts(app: App) -> None:
    inner = app.volumes["work2"] / "sub" / "inner"
    inner.rename(inner.with_name("gone"))
    dirs = GrantDirs(app)
    dirs.open()
    try:
        with pytest.raises(FeatureStartError, match="could not be opened when the app opened"):
            dirs.directory("s", _grant(app, "/sub"))
    finally:
        dirs.close()
