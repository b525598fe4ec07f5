"""Where the runtime is shown to the zygote and its containers, for this interpreter and others.

The layouts are computed from the real interpreter (its prefixes, ``sys.path``, loaded
libraries); a Python installed in ``/usr`` is this interpreter's ``sys`` pointed at the
system's own Python. A container runs in either layout here; what it can learn in the
neutral one is judged in ``tests/security/test_host_facts.py``.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import pytest
import trio

import capsule
import fusefs
from capsule._spawn import _client
from capsule._spawn._layout import NEUTRAL_ROOT, neutral_support, plan_runtime, rewrite_build_data
from capsule.feature import Context
from capsule.testing import TestApp, leftovers

_PACKAGES = [os.path.dirname(capsule.__file__), os.path.dirname(fusefs.__file__)]
_SYSTEM = ("/usr/lib/", "/lib/", "/usr/lib64", "/lib64", "/usr/lib32", "/lib32", "/etc/")


def _beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def test_the_neutral_layout_shows_the_runtime_beneath_usr_lib_capsule() -> None:
    layout = plan_runtime(_PACKAGES, neutral=True)
    assert layout.mode == "neutral"
    for bind in layout.binds:
        if bind.hidden:
            assert _beneath(bind.target, NEUTRAL_ROOT), bind
        else:  # the distribution's library directories, at their own paths
            assert bind.target == bind.source, bind
            assert bind.source.startswith(_SYSTEM), bind
    assert _beneath(layout.executable, NEUTRAL_ROOT), layout.executable
    assert layout.to_host(layout.executable) == os.path.realpath(sys.executable)
    assert layout.path, layout
    assert all(_beneath(entry, NEUTRAL_ROOT) for entry in layout.path), layout.path
    packages = f"{NEUTRAL_ROOT}/packages"  # capsule and fusefs, each a mount beneath it
    editable = "site-packages" not in os.path.realpath(capsule.__file__)
    assert (packages in layout.path) == editable, layout.path
    found = [entry for entry in layout.path if entry != packages]
    assert all(os.path.isdir(layout.to_host(entry)) for entry in found), layout.path
    assert all(_beneath(entry, NEUTRAL_ROOT) for entry in layout.library_path)


def test_the_host_layout_shows_everything_at_its_own_path() -> None:
    layout = plan_runtime(_PACKAGES, neutral=False, reason="not root")
    assert layout.mode == "host"
    assert layout.reason == "not root"
    assert all(b.target == b.source and not b.hidden for b in layout.binds), layout.binds
    assert layout.library_path == ()
    assert layout.to_host(layout.executable) == layout.executable


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/python3") or not os.path.isdir("/usr/lib/x86_64-linux-gnu"),
    reason="needs a system Python in /usr and a multiarch library directory",
)
def test_a_python_installed_in_usr_keeps_the_system_libraries_at_their_own_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The prefix /usr is shown beneath /usr/lib/capsule; the library directories inside it
    that the dynamic loader searches are still mounted where it looks for them."""
    for name in ("prefix", "base_prefix", "exec_prefix", "base_exec_prefix"):
        monkeypatch.setattr(sys, name, "/usr")
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    layout = plan_runtime(_PACKAGES, neutral=True)
    shown = {bind.source: bind.target for bind in layout.binds}
    assert shown["/usr"] == f"{NEUTRAL_ROOT}/python"
    assert shown["/usr/lib/x86_64-linux-gnu"] == "/usr/lib/x86_64-linux-gnu"
    assert layout.executable == f"{NEUTRAL_ROOT}/python/bin/" + os.path.basename(
        os.path.realpath("/usr/bin/python3")
    )


def test_the_build_data_is_rewritten_for_where_the_prefix_is_shown(tmp_path: Path) -> None:
    layout = rewrite_build_data(plan_runtime(_PACKAGES, neutral=True), str(tmp_path))
    prefix = next(b for b in layout.binds if b.target == f"{NEUTRAL_ROOT}/python")
    assert prefix.layers, prefix
    written = glob.glob(f"{prefix.layers[0]}/lib/python*/_sysconfigdata_*.py")
    assert written, prefix.layers
    for path in written:
        text = Path(path).read_text(encoding="utf-8")
        assert f"'{NEUTRAL_ROOT}/python'" in text
        assert prefix.source not in text
        assert sys.base_prefix not in text
        cached = glob.glob(f"{os.path.dirname(path)}/__pycache__/_sysconfigdata_*.pyc")
        assert cached, os.listdir(os.path.dirname(path))
    host = plan_runtime(_PACKAGES, neutral=False)
    assert rewrite_build_data(host, str(tmp_path / "host")) == host
    assert not (tmp_path / "host").exists()


def _mount_table() -> list[list[str]]:
    """This process's mount table: root, mount point, file system type."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        rows = [line.split() for line in f]
    return [[row[3], row[4], row[row.index("-") + 1]] for row in rows]


async def _mounts(ctx: Context, _: object) -> list[list[str]]:
    return _mount_table()


def _prefix() -> str:
    return os.path.realpath(sys.base_prefix)


@pytest.mark.skipif(not neutral_support()[0], reason="compares with the neutral layout")
@pytest.mark.trio
@pytest.mark.parametrize("neutral", [True, False], ids=["neutral", "host"])
async def test_containers_run_in_either_layout(
    capsule_app: TestApp, monkeypatch: pytest.MonkeyPatch, neutral: bool
) -> None:
    """Where the zygote cannot have a root of its own (here: told so), containers still run,
    with the runtime at its host paths; the bundle is hidden either way."""
    monkeypatch.setattr(_client, "neutral_support", lambda: (neutral, "" if neutral else "told"))
    capsule_app.feature("probe").service("mounts")(_mounts)
    with trio.fail_after(60):
        async with capsule_app.open() as sup:
            mounts = await sup.call("probe", "mounts", None)
    points = {point: (root, fstype) for root, point, fstype in mounts}
    assert points["/bundle"] == ("/", "overlay"), points
    prefix = _prefix()
    if neutral:
        assert points[f"{NEUTRAL_ROOT}/python"] == ("/", "overlay"), points
        assert prefix not in points, points
    else:
        assert points[prefix][0] == prefix, points  # a bind, at its own path
        assert f"{NEUTRAL_ROOT}/python" not in points, points
    assert leftovers() == []
