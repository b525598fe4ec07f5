"""Each container sees its files through its own fusefs view: real containers, real mounts.

The mount kinds as a feature sees them (ro, rw, private, cow), /capsule/, the audit of
what the file-system server denied, revocation while a file is open, a hung or crashed
server (aborted, the container restarted, the view back), data that was synced
surviving crashes, and a feature hammering its view while another keeps working.
"""

# Container handlers use plain blocking file calls on purpose: that is what a feature does.
# ruff: noqa: ASYNC230

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import fusefs
from capsule import (
    FeatureCrashedError,
    FeatureUnavailableError,
    RemoteError,
    Supervisor,
    ViewTimeouts,
)
from capsule._container._feature import Context
from capsule._supervisor._rundir import runtime_base
from capsule.testing import TestApp, leftovers
from tests.capsule.supervisor.helpers import FAST, LIMITS, alive, wait_new_pid, wait_until
from tests.security._host import descendants

#: probe often and give up quickly, so a hung server is found within a second
QUICK = ViewTimeouts(mount=10.0, probe_interval=0.2, probe=0.5)


# -- run inside the containers -------------------------------------------------------------


def _errno_of(action: Any) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


async def tour(ctx: Context, request: Any) -> Any:
    """Use every mount of the view the way a feature would, with plain file calls."""

    def write(path: str, text: str, mode: str = "w") -> None:
        with open(path, mode, encoding="utf-8") as f:
            f.write(text)

    def rename_in_rw() -> None:
        os.makedirs("/notes/in/deeper", exist_ok=True)
        write("/notes/in/moved.txt", "moved")
        os.rename("/notes/in/moved.txt", "/notes/in/deeper/moved.txt")

    return {
        "words": open("/words/list.txt", encoding="utf-8").read(),
        "write_ro": _errno_of(lambda: write("/words/new.txt", "x")),
        "append_ro": _errno_of(lambda: write("/words/list.txt", "x", "a")),
        "write_rw": _errno_of(lambda: write("/notes/from-feature.txt", "hello from inside")),
        "rename_rw": _errno_of(rename_in_rw),
        "cross_mount": _errno_of(lambda: os.rename("/notes/from-feature.txt", "/state/x")),
        "private": _errno_of(lambda: write("/state/counter", str(request), "w")),
        "cow": _errno_of(lambda: write("/draft/list.txt", "changed by the feature\n", "a")),
        "cow_reads": open("/draft/list.txt", encoding="utf-8").read(),
        "execute": _errno_of(lambda: os.execv("/notes/from-feature.txt", ["x"])),  # noqa: S606
        "capsule": sorted(os.listdir("/capsule")),
        "who": open("/capsule/feature", encoding="utf-8").read(),
        "tokens": open("/capsule/tokens", encoding="utf-8").read(),
        "capsule_write": _errno_of(lambda: write("/capsule/feature", "someone else")),
    }


async def escape(ctx: Context, request: Any) -> Any:
    """Path tricks from inside: links to / and /etc (made by the host: the view refuses to
    make them), .. chains, a hard link across mounts."""
    return {
        "make_root_link": _errno_of(lambda: os.symlink("/", "/notes/to-root-again")),
        "make_up_link": _errno_of(lambda: os.symlink("../..", "/notes/many/up")),
        "root_link": os.readlink("/notes/to-root"),
        "through_root": sorted(os.listdir("/notes/to-root/notes")),
        "via_etc_link": _errno_of(lambda: open("/notes/to-etc/passwd").close()),
        "dotdot": _errno_of(lambda: open("/notes/../../../etc/passwd").close()),
        "hardlink": _errno_of(lambda: os.link("/words/list.txt", "/notes/linked")),
        "fifo": _errno_of(lambda: os.mkfifo("/notes/fifo")),
    }


async def read_state(ctx: Context, request: Any) -> Any:
    try:
        return open("/state/counter", encoding="utf-8").read()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0)


async def read_words(ctx: Context, request: Any) -> Any:
    return open("/words/list.txt", encoding="utf-8").read()


_held: dict[str, Any] = {}


async def hold_open(ctx: Context, request: Any) -> Any:
    """Open a file and keep it open across calls."""
    _held["file"] = open("/words/list.txt", "rb")  # noqa: SIM115 - kept open on purpose
    return _held["file"].read(5).decode()


async def read_held(ctx: Context, request: Any) -> Any:
    """Read the held file again from the start, and stat a name: errno names on failure."""
    held = _held["file"]
    outcome = {"read": _errno_of(lambda: (held.seek(0), os.read(held.fileno(), 100)))}
    outcome["stat"] = _errno_of(lambda: os.stat("/words/list.txt"))
    outcome["notes"] = _errno_of(lambda: os.listdir("/notes"))
    return outcome


async def write_synced(ctx: Context, request: Any) -> Any:
    """Write and fsync ``request["synced"]``, then keep writing unsynced data until told."""
    with open("/notes/synced.txt", "w", encoding="utf-8") as f:
        f.write(request["synced"])
        f.flush()
        os.fsync(f.fileno())
    return "synced"


async def hammer(ctx: Context, request: Any) -> Any:
    """Stat, list and read the own view as fast as possible for ``request`` seconds."""
    import time  # noqa: PLC0415 - shipped by value: keep the handler self-contained

    end = time.monotonic() + request
    rounds = 0
    while time.monotonic() < end:
        for name in os.listdir("/notes/many"):
            os.stat(f"/notes/many/{name}")
        with open("/words/list.txt", "rb") as f:
            f.read()
        rounds += 1
    return rounds


async def timed_reads(ctx: Context, request: Any) -> Any:
    """Latencies (seconds) of ``request`` open+read+close rounds of a file of the own view."""
    import time  # noqa: PLC0415 - shipped by value: keep the handler self-contained

    latencies = []
    for _ in range(request):
        start = time.perf_counter()
        with open("/words/list.txt", "rb") as f:
            f.read()
        os.stat("/words")
        latencies.append(time.perf_counter() - start)
    return latencies


# -- the host side -------------------------------------------------------------------------


def _audit(app: TestApp) -> list[dict[str, Any]]:
    text = (app.root / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _fs_token(sup: Supervisor, feature: str) -> str:
    held = [
        t for t in sup.feature(feature).tokens() if any(c.startswith("fs:") for c in t.capabilities)
    ]
    assert len(held) == 1, held
    return held[0].token_id


def _view_mounts_of(pid: int) -> list[str]:
    """Mount points of the views of the supervisor running as ``pid``."""
    mounts = fusefs.fuse_mounts_beneath(str(runtime_base()))
    return [point for point, _ in mounts if f"/{pid}-" in point]


def _view_app(tmp_path: Path) -> TestApp:
    app = TestApp(tmp_path)
    app.volume("words", {"list.txt": "alpha\nbeta\n"})
    app.volume("notes", {"many/.keep": ""})
    writer = app.feature(
        "writer",
        limits=LIMITS,
        restart=FAST,
        policy={
            "fs": [
                {"path": "/words", "volume": "words", "mode": "ro"},
                {"path": "/notes", "volume": "notes", "mode": "rw", "quota": "1MiB"},
                {"path": "/state", "mode": "private", "inodes": 100},
                {"path": "/draft", "volume": "words", "mode": "cow"},
            ]
        },
    )
    handlers = (tour, escape, read_state, read_words, hold_open, read_held, write_synced, hammer)
    for handler in handlers:
        writer.service(handler.__name__)(handler)
    reader = app.feature(
        "reader",
        limits=LIMITS,
        restart=FAST,
        policy={"fs": [{"path": "/words", "volume": "words", "mode": "ro"}]},
    )
    for handler in (read_words, timed_reads):
        reader.service(handler.__name__)(handler)
    return app


@pytest.mark.trio
async def test_each_kind_of_mount_behaves_as_granted(tmp_path: Path) -> None:
    """ro reads only (writes refused and audited), rw writes reach the volume, private
    storage survives a restart, cow changes stay the feature's own, /capsule/ says who
    the container is; a second feature's ro view of the same volume keeps the original."""
    app = _view_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(30):
            seen = await sup.call("writer", "tour", 41)
            token = _fs_token(sup, "writer")
            await wait_until(
                lambda: sup.feature("writer").statistics().files_denied >= 2,
                "the two refused writes are counted",
            )
            await wait_until(
                lambda: sup.feature("writer").statistics().files_allowed > 0,
                "the allowed file operations are counted (once a second)",
            )
            assert await sup.call("reader", "read_words") == "alpha\nbeta\n"
            await sup.restart("writer")
            assert await sup.call("writer", "read_state") == "41"
    assert seen["words"] == "alpha\nbeta\n"
    assert seen["write_ro"] == "EROFS"
    assert seen["append_ro"] == "EROFS"
    assert seen["write_rw"] == "ok"
    assert seen["rename_rw"] == "ok"
    assert seen["cross_mount"] == "EXDEV"
    assert seen["private"] == "ok"
    assert seen["cow"] == "ok"
    assert seen["cow_reads"] == "alpha\nbeta\nchanged by the feature\n"
    assert seen["execute"] == "EACCES"  # writable trees are noexec
    assert seen["capsule"] == ["capabilities", "expires", "feature", "mounts", "tokens", "version"]
    assert seen["who"] == "writer\n"
    assert token in seen["tokens"]
    assert seen["capsule_write"] in {"EROFS", "EACCES"}
    volumes = tmp_path / "volumes"
    assert (volumes / "notes" / "from-feature.txt").read_text() == "hello from inside"
    assert (volumes / "notes" / "in" / "deeper" / "moved.txt").read_text() == "moved"
    assert (volumes / "words" / "list.txt").read_text() == "alpha\nbeta\n"  # cow left it alone
    # where docs/guide/files.md says a cow change lives: STATE/cow/FEATURE/PATH/changes/
    changed = tmp_path / "state" / "cow" / "writer" / "draft" / "changes" / "list.txt"
    assert changed.read_text() == "alpha\nbeta\nchanged by the feature\n"
    assert not (volumes / "words" / "new.txt").exists()
    assert (tmp_path / "state" / "private" / "writer" / "state" / "counter").read_text() == "41"
    denials = [e for e in _audit(app) if e["event"] == "fs-deny"]
    refused = {(e["operation"], e["path"]) for e in denials}
    assert ("create", "/words/new.txt") in refused
    assert ("open", "/words/list.txt") in refused
    assert all(e["feature"] == "writer" and e["token"] == token for e in denials), denials
    assert all(e["capability"] == "fs:write:/words/" for e in denials)
    allowed = [e for e in _audit(app) if e["event"] == "fs-allow" and e["feature"] == "writer"]
    assert sum(e["count"] for e in allowed if e["operation"] == "write") >= 3
    assert leftovers() == []


@pytest.mark.trio
async def test_path_tricks_from_inside_stay_inside_the_view(tmp_path: Path) -> None:
    """A symlink to / in a writable volume resolves in the container's own root (which
    holds the view, not the host); the container cannot make one (EPERM), nor one that
    climbs out of the mount; .. chains and links to /etc find nothing; a hard link across
    mounts fails with EXDEV; a FIFO cannot be made (Landlock refuses it before the server
    would)."""
    app = _view_app(tmp_path)
    os.symlink("/", tmp_path / "volumes" / "notes" / "to-root")
    os.symlink("/etc", tmp_path / "volumes" / "notes" / "to-etc")
    async with app.open() as sup:
        with trio.fail_after(20):
            seen = await sup.call("writer", "escape")
    assert seen["make_root_link"] == "EPERM"
    assert seen["make_up_link"] == "EPERM"
    assert seen["root_link"] == "/"
    assert "to-root" in seen["through_root"]  # / of the container is where /notes lives
    assert seen["via_etc_link"] == "ENOENT"
    assert seen["dotdot"] == "ENOENT"
    assert seen["hardlink"] == "EXDEV"
    assert seen["fifo"] in {"EACCES", "EPERM"}
    assert os.readlink(tmp_path / "volumes" / "notes" / "to-root") == "/"
    assert not (tmp_path / "volumes" / "notes" / "linked").exists()
    assert not (tmp_path / "volumes" / "notes" / "to-root-again").is_symlink()
    assert leftovers() == []


@pytest.mark.trio
async def test_revoking_the_fs_token_closes_the_view_while_a_file_is_open(
    tmp_path: Path,
) -> None:
    """Once ``await sup.revoke`` returns, the next read of an already open file fails with
    EACCES, and so does every other access through the mounts that token granted; the
    denial and the revocation are audited with the token id; the other feature reads on."""
    app = _view_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(30):
            assert await sup.call("writer", "hold_open") == "alpha"
            assert await sup.call("writer", "read_held") == {
                "read": "ok",
                "stat": "ok",
                "notes": "ok",
            }
            token = _fs_token(sup, "writer")
            assert token in await sup.revoke(token)
            # revoke() returned: the very next read fails, not one served from the cache
            assert await sup.call("writer", "read_held") == {
                "read": "EACCES",
                "stat": "EACCES",
                "notes": "EACCES",
            }
            assert await sup.call("reader", "read_words") == "alpha\nbeta\n"
    events = _audit(app)
    revoked = [e for e in events if e["event"] == "fs-revoke"]
    assert revoked, events
    assert revoked[0]["feature"] == "writer"
    assert token in revoked[0]["revoked"]
    assert set(revoked[0]["mounts"]) == {"/words", "/notes", "/state", "/draft"}
    after = [e for e in events if e["event"] == "fs-deny" and "revoked" in e["reason"]]
    assert after, events
    assert {e["token"] for e in after} == {token}


@pytest.mark.trio
async def test_a_hung_view_server_is_aborted_and_the_feature_recovers(tmp_path: Path) -> None:
    """A server that stops answering (SIGSTOP) is found by its probe, aborted, so the
    container's blocked read fails instead of hanging, and killed; the container is
    restarted with a fresh view and reads again; the other feature was never blocked."""
    app = _view_app(tmp_path)
    async with app.open(view_timeouts=QUICK) as sup:
        with trio.fail_after(30):
            instance = sup.feature("writer").instance
            assert instance is not None
            assert instance.view is not None
            server, old = instance.view.pid, instance.pid
            os.kill(server, signal.SIGSTOP)
            # the blocked read fails with ECONNABORTED once the view is aborted, or the
            # container is ended first: either way the call ends instead of hanging
            with pytest.raises((FeatureCrashedError, RemoteError)) as failed:
                await sup.call("writer", "read_words")
            if isinstance(failed.value, RemoteError):
                assert "ConnectionAbortedError" in str(failed.value), failed.value
            assert await sup.call("reader", "read_words") == "alpha\nbeta\n"
            await wait_new_pid(sup, "writer", old)
            await wait_until(lambda: not alive(server), "the hung server is gone")
            assert await sup.call("writer", "read_state") == "ENOENT"
    ends = [e for e in _audit(app) if e["event"] == "fs-end"]
    assert ends, "the hung server is audited"
    assert leftovers() == []


@pytest.mark.trio
async def test_an_open_file_limit_the_view_server_cannot_raise_is_logged(tmp_path: Path) -> None:
    """A server whose hard open-file limit is below what it asks for still serves, and
    the supervisor logs what the lower limit means (never a silent failure)."""
    app = _view_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(30):
            zygote = sup._machinery.zygote
            assert zygote is not None
            # every server forked from now on inherits the lower limit
            resource.prlimit(zygote.pid, resource.RLIMIT_NOFILE, (256, 1024))
            with structlog.testing.capture_logs() as logs:
                await sup.restart("reader")
                assert await sup.call("reader", "read_words") == "alpha\nbeta\n"
    notices = [entry for entry in logs if entry["event"] == "file-system server limit"]
    assert [entry["feature"] for entry in notices] == ["reader"], logs
    assert "the open-file limit stays at 1024" in notices[0]["notice"]
    assert leftovers() == []


@pytest.mark.trio
async def test_a_crashed_view_server_ends_its_container_and_both_come_back(
    tmp_path: Path,
) -> None:
    """Data written and fsync'd before the file-system server was killed is in the volume;
    the container ends (its view is gone) and comes back with a new server."""
    app = _view_app(tmp_path)
    async with app.open(view_timeouts=QUICK) as sup:
        with trio.fail_after(30):
            assert await sup.call("writer", "write_synced", {"synced": "kept"}) == "synced"
            instance = sup.feature("writer").instance
            assert instance is not None
            assert instance.view is not None
            os.kill(instance.view.pid, signal.SIGKILL)
            new = await wait_new_pid(sup, "writer", instance.pid)
            assert new != instance.pid
            assert instance.ending is not None
            assert "file-system server ended" in instance.ending.reason
            assert await sup.call("writer", "read_state") == "ENOENT"
    assert (tmp_path / "volumes" / "notes" / "synced.txt").read_text() == "kept"
    assert leftovers() == []


@pytest.mark.trio
async def test_a_feature_hammering_its_view_does_not_stall_another(tmp_path: Path) -> None:
    """Each view has its own server: while one feature lists, stats and reads its view in
    a tight loop, the other's file access stays fast: its p99 within 4x of its quiet p99
    (or 25 ms, on a noisy machine). One server for both would hold the reader up behind
    listings of 2,000 entries; benchmarks/views.py measures this properly."""
    app = _view_app(tmp_path)
    for index in range(2000):
        (tmp_path / "volumes" / "notes" / "many" / f"f{index}").write_text("x")
    async with app.open() as sup:
        with trio.fail_after(60):
            quiet = await sup.call("reader", "timed_reads", 300)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: sup.call("writer", "hammer", 3.0, timeout=20))
                await trio.sleep(0.5)
                loaded = await sup.call("reader", "timed_reads", 300)
    quiet_p99 = statistics.quantiles(quiet, n=100)[98]
    loaded_p99 = statistics.quantiles(loaded, n=100)[98]
    figures = f"reader p99 quiet {quiet_p99 * 1e6:.0f} us, hammered {loaded_p99 * 1e6:.0f} us"
    assert loaded_p99 < max(4 * quiet_p99, 0.025), figures


@pytest.mark.trio
async def test_the_view_server_joins_its_containers_cgroup(tmp_path: Path) -> None:
    """What a feature makes its file-system server do and hold counts against that
    feature's limits: the server is in the container's group in every hierarchy (memory,
    pids, cpu), beside the container."""
    app = _view_app(tmp_path)
    async with app.open() as sup:
        with trio.fail_after(20):
            await sup.call("reader", "read_words")
        instance = sup.feature("reader").instance
        assert instance is not None
        assert instance.view is not None
        if instance.cgroup is None:
            pytest.skip("no cgroups on this machine")
        assert instance.cgroup.procs_files
        for procs in instance.cgroup.procs_files:
            members = _pids_in(procs)
            assert instance.view.pid in members, procs
            assert instance.pid in members, procs
    assert leftovers() == []


@pytest.mark.trio
async def test_a_view_that_cannot_be_built_fails_the_start_with_the_reason(
    tmp_path: Path,
) -> None:
    """A cow layer whose state directory cannot be created is a start failure that names
    the feature; nothing is left mounted."""
    app = TestApp(tmp_path)
    app.volume("words", {"list.txt": "a"})
    feature = app.feature(
        "broken",
        limits=LIMITS,
        restart={"policy": "never"},
        policy={"fs": [{"path": "/draft", "volume": "words", "mode": "cow"}]},
    )
    feature.service("read_words")(read_words)
    blocker = tmp_path / "state-file"
    blocker.write_text("not a directory")
    async with app.open(state_dir=blocker) as sup:
        with trio.fail_after(20), pytest.raises(FeatureUnavailableError, match="broken"):
            await sup.call("broken", "read_words")
        last = sup.feature("broken").last_exit or ""
    assert "the file-system server of broken ended before mounting its view" in last, last
    assert leftovers() == []


_CRASHING_HOST = textwrap.dedent(
    """
    import sys, trio, capsule
    from capsule.testing import TestApp
    from tests.capsule.supervisor.test_views import write_synced

    async def main(root):
        app = TestApp(root)
        app.volume("notes")
        feature = app.feature("writer", policy={"fs": [
            {"path": "/notes", "volume": "notes", "mode": "rw"}]})
        feature.service("write_synced")(write_synced)
        async with app.open() as sup:
            await sup.call("writer", "write_synced", {"synced": "survives"})
            print("written", flush=True)
            await trio.sleep_forever()

    trio.run(main, sys.argv[1])
    """
)


@pytest.mark.trio
async def test_synced_data_survives_a_supervisor_crash_and_stale_views_are_cleaned(
    tmp_path: Path,
) -> None:
    """A supervisor killed with SIGKILL loses nothing that was fsync'd; the next supervisor
    to start removes the views the dead one left mounted."""
    host = await trio.lowlevel.open_process(
        [sys.executable, "-c", _CRASHING_HOST, str(tmp_path / "crashed")],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[3],
    )
    try:
        assert host.stdout is not None
        output = b""
        with trio.fail_after(30):
            while b"written\n" not in output:
                chunk = await host.stdout.receive_some()
                assert chunk, f"the crashing host ended early: {output!r}"
                output += chunk
        assert _view_mounts_of(host.pid), "the running supervisor's view is mounted"
        started = descendants(host.pid)  # its zygote, view server and container
        assert len(started) >= 3, started
    finally:
        host.kill()
        await host.wait()
        if host.stdout is not None:
            await host.stdout.aclose()
    assert (tmp_path / "crashed" / "volumes" / "notes" / "synced.txt").read_text() == "survives"
    await wait_until(lambda: not any(alive(pid) for pid in started), "its processes are gone")
    app = _view_app(tmp_path / "next")
    async with app.open() as sup:
        with trio.fail_after(20):
            assert await sup.call("reader", "read_words") == "alpha\nbeta\n"
        assert _view_mounts_of(host.pid) == []


def _pids_in(procs: str | Path) -> set[int]:
    with open(procs, encoding="ascii") as f:
        return {int(pid) for pid in f.read().split()}
