"""The control socket's pieces on their own: finding and choosing runs, the admin secret
file, and the protocol's closed message set and limits."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from capsule._control._errors import ControlRefusedError, NoRunningAppError
from capsule._control._protocol import (
    MAX_REQUEST,
    Call,
    PluginAdd,
    PluginRemove,
    Plugins,
    Restart,
    Start,
    Status,
    Stop,
    decode_request,
    decode_response,
    encode,
    frame_size,
)
from capsule._control._runs import (
    INFO_NAME,
    SOCKET_NAME,
    RunningApp,
    new_secret,
    read_secret,
    running_apps,
    select_app,
    write_private,
)
from capsule._sandbox._cgroup_files import run_name_for
from capsule.errors import ProtocolError

SECRET = "ab" * 32


def _app(name: str, pid: int, tmp_path: Path) -> RunningApp:
    return RunningApp(name, pid, f"{pid}-1", float(pid), tmp_path / f"{pid}-1")


# -- choosing a run ----------------------------------------------------------------------


def test_select_app_takes_the_only_run_or_the_named_one(tmp_path: Path) -> None:
    notes, other = _app("notes", 10, tmp_path), _app("other", 11, tmp_path)
    assert select_app([notes], None) is notes
    assert select_app([notes, other], "other") is other
    assert select_app([notes, other], "10") is notes


@pytest.mark.parametrize(
    ("names", "wanted", "message"),
    [
        ([], None, "no capsule app is running here (start one with `capsule run APP`)"),
        ([], "notes", "no capsule app is running here (start one with `capsule run APP`)"),
        (
            ["notes", "other"],
            None,
            "2 apps are running (notes (pid 10), other (pid 11)): choose one with --app NAME",
        ),
        (["notes"], "nope", "no running app is called 'nope' (running: notes (pid 10))"),
        (
            ["notes", "notes"],
            "notes",
            "2 runs of 'notes' are running (notes (pid 10), notes (pid 11)): "
            "choose one with --app PID",
        ),
    ],
)
def test_select_app_says_why_it_cannot_choose(
    tmp_path: Path, names: list[str], wanted: str | None, message: str
) -> None:
    apps = [_app(name, 10 + i, tmp_path) for i, name in enumerate(names)]
    with pytest.raises(NoRunningAppError) as caught:
        select_app(apps, wanted)
    assert str(caught.value) == message


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A runtime directory holding a live run of this process, with a listening socket."""
    run = tmp_path / run_name_for(os.getpid())
    run.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(run / SOCKET_NAME))
    sock.listen()
    info = {"app": "notes", "pid": os.getpid(), "started": 5.0}
    write_private(run / INFO_NAME, json.dumps(info))
    try:
        yield tmp_path
    finally:
        sock.close()


def test_running_apps_finds_live_runs_with_a_socket(listening: Path) -> None:
    (found,) = running_apps(listening)
    assert (found.app, found.pid, found.started) == ("notes", os.getpid(), 5.0)
    assert found.socket == listening / run_name_for(os.getpid()) / SOCKET_NAME


def test_running_apps_skips_dead_broken_and_foreign_entries(listening: Path) -> None:
    ours = listening / run_name_for(os.getpid())
    dead = listening / "999999999-1"  # no such pid
    dead.mkdir()
    (dead / INFO_NAME).write_text(json.dumps({"app": "x", "pid": 999999999, "started": 1}))
    reused = listening / f"{os.getpid()}-1"  # our pid, another start time: a reused pid
    reused.mkdir()
    (reused / INFO_NAME).write_text(json.dumps({"app": "x", "pid": os.getpid(), "started": 1}))
    (listening / "not-a-run").write_text("")
    (listening / "link").symlink_to(ours)
    assert [a.app for a in running_apps(listening)] == ["notes"]
    (ours / INFO_NAME).unlink()
    (ours / INFO_NAME).write_text("{not json")
    assert running_apps(listening) == []
    assert running_apps(listening / "missing") == []


def test_the_secret_file_must_be_private(tmp_path: Path) -> None:
    app = _app("notes", 10, tmp_path)
    app.directory.mkdir()
    write_private(app.secret_path, SECRET + "\n")
    assert oct(app.secret_path.stat().st_mode & 0o777) == "0o600"
    assert read_secret(app) == SECRET
    with pytest.raises(FileExistsError):
        write_private(app.secret_path, "again")
    app.secret_path.chmod(0o640)
    with pytest.raises(ControlRefusedError, match="is not a private file of yours"):
        read_secret(app)
    app.secret_path.unlink()
    (tmp_path / "elsewhere").write_text(SECRET)
    app.secret_path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ControlRefusedError, match="is a symlink"):
        read_secret(app)


def test_each_secret_is_new() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(len(bytes.fromhex(s)) == 32 for s in secrets)


# -- the protocol ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        Status(token=SECRET),
        Call(token=SECRET, feature="f", service="s", payload='{"a": 1}', timeout=2.5),
        Call(token=SECRET, feature="f", service="s"),
        Start(token=SECRET, feature="f"),
        Stop(token=SECRET, feature="f"),
        Restart(token=SECRET, feature="f"),
        PluginAdd(token=SECRET, bundle="/srv/plugins/word-count"),
        PluginAdd(token=SECRET, bundle="/srv/plugins/word-count", approve=True, dry_run=True),
        PluginRemove(token=SECRET, feature="f"),
        PluginRemove(token=SECRET, feature="f", drain=0.0, purge=True),
        Plugins(token=SECRET),
    ],
)
def test_every_request_survives_a_round_trip(request_: object) -> None:
    frame = encode(request_, limit=MAX_REQUEST)  # type: ignore[arg-type]
    assert frame_size(frame[:4], limit=MAX_REQUEST) == len(frame) - 4
    assert decode_request(frame[4:]) == request_


@pytest.mark.parametrize(
    "body",
    [
        {"t": "pickle", "token": SECRET},
        {"t": "status", "token": SECRET, "extra": 1},
        {"t": "status"},
        {"t": "status", "token": "x" * 129},
        {"t": "call", "token": SECRET, "feature": "f", "service": "s", "timeout": -1},
        {"t": "call", "token": SECRET, "feature": "f" * 257, "service": "s"},
        {"t": "stop", "token": SECRET, "feature": ["f"]},
        {"t": "plugin-add", "token": SECRET, "bundle": ""},
        {"t": "plugin-add", "token": SECRET, "bundle": "/p" * 3000},
        {"t": "plugin-remove", "token": SECRET, "feature": "f", "drain": -1},
        {"t": "plugin-remove", "token": SECRET, "feature": "f", "drain": 7200},
        [1, 2, 3],
    ],
)
def test_anything_outside_the_closed_set_is_refused(body: object) -> None:
    with pytest.raises(ProtocolError, match="not a control request"):
        decode_request(msgspec.msgpack.encode(body))


def test_garbage_and_deep_nesting_are_refused() -> None:
    for body in (b"", b"\xc1", b"\x91" * 100_000, b"\xa2\xff\xfe"):
        with pytest.raises(ProtocolError):
            decode_request(body)
        with pytest.raises(ProtocolError):
            decode_response(body)


def test_frames_over_the_limit_are_refused_before_decoding() -> None:
    with pytest.raises(ProtocolError, match="exceeds the 1048576-byte limit"):
        frame_size((MAX_REQUEST + 1).to_bytes(4, "big"), limit=MAX_REQUEST)
    big = Call(token=SECRET, feature="f", service="s", payload="0" * MAX_REQUEST)
    with pytest.raises(ProtocolError, match="exceeds"):
        encode(big, limit=MAX_REQUEST)
