"""THREATS "Processes and resources": a feature's view server is charged to that feature.

Each container's file-system server is a process of the supervisor's, but what a feature
makes it hold counts against the feature: the server joins the container's cgroup (memory,
pids, cpu), and the listings of the directories the container holds open share a budget
(``opendir`` beyond it is ENOMEM). The attacks run in real containers through real FUSE
mounts; the host judges by the server's /proc status and the container's cgroup.
"""

# Container handlers use plain blocking file calls on purpose: that is what a feature does.
# ruff: noqa: ASYNC230

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any, Final

import pytest
import trio

import capsule
from capsule import Supervisor
from capsule.feature import Context
from capsule.testing import TestApp, leftovers
from tests.capsule.supervisor.helpers import alive, wait_until

_MiB: Final = 1 << 20
#: the attack of the report (4,000 long names opened 300 times), scaled to run in seconds
_NAMES: Final = 2000
_OPENS: Final = 150
_MEMORY: Final = 64 * _MiB
#: what the listings of its open directories may hold: a quarter of the memory limit
_BUDGET: Final = _MEMORY // 4
#: the threads a view server keeps, added to its container's pids limit (_SERVER_PIDS)
_SERVER_PIDS: Final = 2

# --- run inside the containers (shipped by value with the handlers) -------------------------

_held: list[Any] = []


async def _hold_listings(ctx: Context, request: Any) -> dict[str, Any]:
    """Open the big directory ``request["opens"]`` times and keep every descriptor open."""
    error = None
    for _ in range(int(request["opens"])):
        try:
            _held.append(os.open("/big", os.O_RDONLY | os.O_DIRECTORY))
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            break
    return {"opened": len(_held), "error": error}


async def _release_and_list(ctx: Context, request: Any) -> int:
    """Close what :func:`_hold_listings` holds, then list the directory again."""
    while _held:
        os.close(_held.pop())
    return len(os.listdir("/big"))


async def _list(ctx: Context, request: Any) -> int:
    return len(os.listdir("/big"))


_threads: list[threading.Thread] = []


async def _fill_pids(ctx: Context, request: Any) -> dict[str, Any]:
    """Start threads that wait until told to stop, until the kernel refuses one."""
    stop = threading.Event()  # made here: the handlers travel by value, locks do not
    for _ in range(int(request["limit"])):
        thread = threading.Thread(target=stop.wait, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            return {"threads": len(_threads), "error": str(exc)}
        _threads.append(thread)
    return {"threads": len(_threads), "error": None}


_hoard: list[bytes] = []


async def _squeeze(ctx: Context, request: Any) -> str:
    """Hold ``request["mib"]`` MiB, then make the view server allocate listings; once the
    view fails, wait to be ended (the supervisor ends a container whose server died)."""
    _hoard.extend(b"x" * (1 << 20) for _ in range(int(request["mib"])))
    for _ in range(300):
        try:
            _held.append(os.open("/big", os.O_RDONLY | os.O_DIRECTORY))
        except OSError as exc:
            time.sleep(30)  # noqa: ASYNC251 - blocks its container on purpose
            return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "all opened"


async def _read_a_file(ctx: Context, request: Any) -> int:
    with open("/big/.keep", "rb") as f:
        return len(f.read())


# --- host side ------------------------------------------------------------------------------


def _rss(pid: int) -> int:
    """The process's resident set in bytes, from its /proc status."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _members(procs: str | Path) -> set[int]:
    return {int(pid) for pid in Path(procs).read_text(encoding="ascii").split()}


def _tasks(pid: int) -> set[int]:
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


def _server(sup: Supervisor, feature: str) -> tuple[int, list[Path]]:
    """The pid of ``feature``'s view server and its container's cgroup directories."""
    instance = sup.feature(feature).instance
    assert instance is not None
    assert instance.view is not None
    if instance.cgroup is None:
        pytest.skip("no cgroups on this machine")
    return instance.view.pid, list(instance.cgroup.paths)


def _big_app(tmp_path: Path) -> TestApp:
    app = TestApp(tmp_path)
    big = app.volume("big", {".keep": "kept"})
    for index in range(_NAMES):
        (big / f"{index:05d}-{'n' * 194}").touch()
    grant = {"fs": [{"path": "/big", "volume": "big", "mode": "ro"}]}
    never = {"policy": "never"}
    limits = {"memory": "64MiB", "pids": 32, "open_files": 1024}
    lister = app.feature("lister", limits=limits, restart=never, policy=grant)
    neighbour = app.feature("neighbour", limits=limits, restart=never, policy=grant)
    for handler in (_hold_listings, _release_and_list, _list, _fill_pids, _read_a_file):
        lister.service(handler.__name__.lstrip("_"))(handler)
    neighbour.service("list")(_list)
    neighbour.service("read_a_file")(_read_a_file)
    return app


@pytest.mark.trio
async def test_open_directory_listings_are_bounded_and_charged_to_their_feature(
    tmp_path: Path,
) -> None:
    """A feature holding a big directory open again and again gets ENOMEM once its
    listings fill their budget; its server's memory stays within the feature's budget and
    counts in the feature's memory cgroup; a neighbour listing the same directory meanwhile
    notices nothing, and closing the directories gives the budget back."""
    app = _big_app(tmp_path)
    with trio.fail_after(60):
        async with app.open() as sup:
            assert await sup.call("lister", "list") == _NAMES + 1
            server, groups = _server(sup, "lister")
            before = _rss(server)
            held = await sup.call("lister", "hold_listings", {"opens": _OPENS})
            grown = _rss(server) - before
            stats = sup.statistics().features["lister"]
            in_groups = {str(group): server in _members(group / "cgroup.procs") for group in groups}
            assert await sup.call("neighbour", "list") == _NAMES + 1
            assert await sup.call("neighbour", "read_a_file") == 4
            relisted = await sup.call("lister", "release_and_list")
    assert held["error"] == "ENOMEM", (held, f"server RSS {before} + {grown} bytes")
    assert 0 < held["opened"] < _OPENS
    # the listings fit their budget, with room for what one listing costs on its way in
    assert grown <= _BUDGET + 4 * _MiB, f"server RSS grew by {grown} bytes, budget {_BUDGET}"
    assert all(in_groups.values()), in_groups
    assert stats.memory_current is not None
    assert stats.memory_current <= _MEMORY
    assert relisted == _NAMES + 1
    assert leftovers() == []


@pytest.mark.trio
async def test_a_view_servers_threads_count_against_its_features_pids_limit(
    tmp_path: Path,
) -> None:
    """Every thread of a feature's view server is in the container's pids group, whose
    limit is the feature's plus the server's standing threads: a feature that fills it
    gets its own limit's worth of threads, the group never holds more than its limit, and
    the view still serves the feature (past a probe made at the limit) and its neighbour."""
    app = _big_app(tmp_path)
    with trio.fail_after(60):
        async with app.open() as sup:
            assert await sup.call("lister", "list") == _NAMES + 1
            server, groups = _server(sup, "lister")
            pids_groups = [g for g in groups if (g / "pids.max").exists()]
            if not pids_groups:
                pytest.skip("no pids controller on this machine")
            (group,) = pids_groups
            filled = await sup.call("lister", "fill_pids", {"limit": 64})
            tasks_file = group / ("tasks" if (group / "tasks").exists() else "cgroup.threads")
            server_tasks = _tasks(server)
            counted = _members(tasks_file)
            current = int((group / "pids.current").read_text())
            maximum = int((group / "pids.max").read_text())
            await trio.sleep(2.5)  # past a probe of the server, made while at the limit
            assert await sup.call("lister", "read_a_file") == 4
            assert await sup.call("neighbour", "list") == _NAMES + 1
    assert filled["error"] == "can't start new thread", filled
    assert server_tasks <= counted, (server_tasks, counted)
    assert current <= maximum == 32 + _SERVER_PIDS
    assert len(server_tasks) <= _SERVER_PIDS
    # the threads it started, beside its container's two processes, filled its own limit
    assert filled["threads"] + 2 <= 32
    assert leftovers() == []


def _oom_score_adj(pid: int, value: int) -> None:
    Path(f"/proc/{pid}/oom_score_adj").write_text(str(value), encoding="ascii")


@pytest.mark.trio
async def test_a_view_server_killed_at_its_features_memory_limit_ends_the_container(
    tmp_path: Path,
) -> None:
    """The kernel's OOM killer may pick the view server when its feature reaches its
    memory limit, since both are in one group: the feature fills its memory to a few MiB
    under the limit, then makes its server allocate listings (the host marks the server
    the first candidate, as it would be were it the largest). The container is then ended
    with a reason naming its server, restarted per its policy with a fresh view, and a
    neighbour never notices."""
    app = TestApp(tmp_path)
    big = app.volume("big", {".keep": "kept"})
    for index in range(_NAMES):
        (big / f"{index:05d}-{'n' * 194}").touch()
    grant = {"fs": [{"path": "/big", "volume": "big", "mode": "ro"}]}
    restart = {"policy": "on-failure", "max_restarts": 3, "window": "60s", "backoff": "10ms..50ms"}
    limits = {"memory": "64MiB", "pids": 32, "open_files": 1024}
    eater = app.feature("eater", limits=limits, restart=restart, policy=grant)
    neighbour = app.feature("neighbour", limits=limits, policy=grant)
    eater.service("read_a_file")(_read_a_file)
    eater.service("squeeze")(_squeeze)
    neighbour.service("read_a_file")(_read_a_file)
    with trio.fail_after(90):
        async with app.open() as sup:
            assert await sup.call("eater", "read_a_file") == 4
            instance = sup.feature("eater").instance
            assert instance is not None
            assert instance.view is not None
            server = instance.view.pid
            _oom_score_adj(server, 1000)
            used = sup.statistics().features["eater"].memory_current
            assert used is not None
            room = (_MEMORY - used) // _MiB - 4  # the server's listings need more than that
            with pytest.raises(capsule.FeatureCrashedError) as ended:
                await sup.call("eater", "squeeze", {"mib": room})
            assert not alive(server)
            assert await sup.call("neighbour", "read_a_file") == 4
            eater_now = sup.feature("eater")
            await wait_until(lambda: eater_now.statistics().state == "running", "a restart")
            assert await sup.call("eater", "read_a_file") == 4
            restarted = sup.feature("eater").instance
            assert restarted is not None
            assert restarted.view is not None
            assert restarted.view.pid != server
            last = sup.feature("eater").last_exit or ""
    reason = str(ended.value)
    assert "its file-system server ended (killed by SIGKILL)" in reason, reason
    assert "killed by its memory limit (out of memory)" in reason, reason
    assert "file-system server ended" in last, last
    assert leftovers() == []
