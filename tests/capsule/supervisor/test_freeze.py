"""Freezing a running feature's container through its Instance: calls wait, thaw resumes them.

A real app with real containers; the frozen state is read on the host from the container's
cgroup files, and a frozen container must still be stopped and cleaned up completely.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import capsule.testing
from capsule import FeatureUnavailableError, Supervisor
from capsule._sandbox._cgroup_detect import detect
from capsule._supervisor._instance import Instance
from capsule._supervisor._views import ViewTimeouts
from capsule.errors import SandboxError
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import echo_feature, wait_until

SUPPORT = detect()
#: probes of the file-system servers every 0.1 s, failing after 0.3 s: a frozen container's
#: server, frozen with it, would be judged hung well within the tests' freezes
QUICK = ViewTimeouts(mount=10.0, probe_interval=0.1, probe=0.3)
needs_freezer = pytest.mark.skipif(
    not SUPPORT.writable or (SUPPORT.version == 1 and "freezer" not in SUPPORT.roots),
    reason=f"no cgroup freezer here: {SUPPORT.describe()}",
)


def _instance(sup: Supervisor, name: str) -> Instance:
    instance = sup.feature(name).instance
    assert instance is not None
    assert instance.cgroup is not None
    return instance


def _host_frozen(instance: Instance) -> bool:
    """What the container's cgroup files say, read directly on the host."""
    assert instance.cgroup is not None
    for path in instance.cgroup.paths:
        if (path / "freezer.state").exists():
            return (path / "freezer.state").read_text().strip() == "FROZEN"
        if (path / "cgroup.freeze").exists():
            return "frozen 1" in (path / "cgroup.events").read_text().splitlines()
    raise AssertionError(f"no freezer file in {instance.cgroup.paths}")


@needs_freezer
@pytest.mark.trio
async def test_a_frozen_feature_answers_no_call_until_thawed(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "old")
    echo_feature(app, "other")
    with trio.fail_after(30):
        async with app.open(view_timeouts=QUICK) as sup:
            instance = _instance(sup, "old")
            assert await sup.call("old", "echo", 1) == 1
            assert not instance.frozen

            await instance.freeze()
            assert instance.frozen
            assert _host_frozen(instance)
            answers: list[object] = []

            async def call() -> None:
                answers.append(await sup.call("old", "echo", 2))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await trio.sleep(1.0)  # several probe timeouts: its server is not judged hung
                assert answers == []  # frozen: the call waits
                assert not instance.ended.is_set()
                assert instance.frozen
                assert await sup.call("other", "echo", 3) == 3  # its neighbour answers
                await instance.thaw()
                assert not instance.frozen
                assert not _host_frozen(instance)
            assert answers == [2]
            assert sup.feature("old").instance is instance  # the same container, not restarted
            assert instance.view is not None
            assert instance.view.failure is None
            await trio.sleep(0.5)  # probed again after the thaw, and answering
            assert instance.view.failure is None
            assert not instance.ended.is_set()
    assert capsule.testing.leftovers() == []


@needs_freezer
@pytest.mark.trio
async def test_a_frozen_feature_is_stopped_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "old")
    with trio.fail_after(30):
        async with app.open(stop_timeout=20, view_timeouts=QUICK) as sup:
            instance = _instance(sup, "old")
            await instance.freeze()
            paths = instance.cgroup.paths if instance.cgroup is not None else ()
            start = trio.current_time()
            await sup.stop("old")
            assert trio.current_time() - start < 5  # killed, not waited on for 20 s
            assert instance.ended.is_set()
            assert instance.ending is not None
            assert instance.ending.requested
            assert instance.ending.signal == 9
            assert "file-system server" not in instance.ending.reason  # spared, stopped cleanly
            await wait_until(
                lambda: not any(p.exists() for p in paths), "its cgroup removed", limit=5
            )
            with pytest.raises(FeatureUnavailableError, match="its container has ended"):
                await instance.freeze()
            with pytest.raises(FeatureUnavailableError, match="its container has ended"):
                await instance.thaw()
    assert capsule.testing.leftovers() == []


@needs_freezer
@pytest.mark.trio
async def test_kill_ends_a_frozen_feature(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "old")
    with trio.fail_after(30):
        async with app.open() as sup:
            instance = _instance(sup, "old")
            await instance.freeze()
            await instance.kill()
            with trio.fail_after(5):
                await instance.ended.wait()
            assert instance.ending is not None
            assert instance.ending.signal == 9
            assert "file-system server" not in instance.ending.reason
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_freeze_without_a_cgroup_says_so(tmp_path: Path) -> None:
    app = TestApp(tmp_path)
    echo_feature(app, "plain")
    with trio.fail_after(30):
        async with app.open() as sup:
            instance = sup.feature("plain").instance
            assert instance is not None
            cgroup, instance.cgroup = instance.cgroup, None  # as on a host without cgroups
            try:
                assert not instance.frozen
                with pytest.raises(SandboxError, match="cannot freeze feature 'plain': its conta"):
                    await instance.freeze()
                with pytest.raises(SandboxError, match="cannot thaw feature 'plain': its contai"):
                    await instance.thaw()
            finally:
                instance.cgroup = cgroup
    assert capsule.testing.leftovers() == []
