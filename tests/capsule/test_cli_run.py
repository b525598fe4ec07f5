"""``capsule run`` and the commands that reach a running app through its control socket,
run as a user would: every command in its own subprocess, against a real app."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule._control._client import ControlClient
from capsule._control._errors import ControlRefusedError
from capsule._control._protocol import MAX_REQUEST, Failure, Status, decode_response, encode
from capsule._control._runs import RunningApp, running_apps
from capsule._supervisor._rundir import runtime_base
from tests.capsule.cli_run_helpers import (
    ROOT,
    WAIT,
    Run,
    capsule,
    leftovers_of,
    lines_until,
    paths_of,
    read_terminal,
    running,
    start_run,
    wait_for,
)


@pytest.fixture(scope="module")
def app_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run shared by the tests that leave it as they found it (JSON logs, status lines
    every half second)."""
    with running(
        tmp_path_factory.mktemp("run"), "--log-format", "json", "--interval", "0.5"
    ) as run:
        yield run


def _ps(run: Run) -> dict[str, object]:
    result = capsule("ps", "--app", run.name, "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _features(run: Run) -> dict[str, dict[str, object]]:
    features = _ps(run)["features"]
    assert isinstance(features, list)
    return {f["name"]: f for f in features}


# -- ps, top, call ---------------------------------------------------------------------


def test_ps_lists_every_feature_of_the_running_app(app_run: Run) -> None:
    data = _ps(app_run)
    assert data["app"] == app_run.name
    assert data["pid"] == app_run.pid
    assert data["audit_path"] == str(app_run.audit)
    features = _features(app_run)
    assert list(features) == ["echo", "spare"]
    for feature in features.values():
        assert feature["state"] == "running"
        assert isinstance(feature["pid"], int)
        assert feature["pid"] > 0
        assert feature["restarts"] == 0
        assert isinstance(feature["uptime"], float)

    text = capsule("ps", "--app", app_run.name)
    assert text.returncode == 0, text.stderr
    head, columns, *rows = text.stdout.splitlines()
    assert head.startswith(f"app {app_run.name}  pid {app_run.pid}  up ")
    assert columns.split() == [
        *("FEATURE", "VERSION", "STATE", "PID", "RESTARTS", "UPTIME", "MEMORY", "CALLS"),
        *("DENIED", "FS-DENIED", "SUBS", "DELEG", "QUEUED"),
    ]
    assert [row.split()[:3] for row in rows] == [
        ["echo", "1.0.0", "running"],
        ["spare", "1.0.0", "running"],
    ]


def test_call_prints_the_json_reply(app_run: Run) -> None:
    result = capsule("call", "--app", app_run.name, "echo.echo", '{"a": [1, "x", null]}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"a": [1, "x", None]}
    assert result.stdout.count("\n") == 1

    from_stdin = capsule("call", "--app", app_run.name, "echo.echo", "-", stdin="[1, 2]")
    assert (from_stdin.returncode, json.loads(from_stdin.stdout)) == (0, [1, 2])
    through = capsule("call", "--app", app_run.name, "echo.ping")
    assert (through.returncode, through.stdout) == (0, '"pong"\n')
    default = capsule("call", "--app", app_run.name, "echo.echo")
    assert (default.returncode, default.stdout) == (0, "null\n")


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["echo.fail", "{}"], 1, "capsule: error: feature 'echo': ValueError: asked to fail"),
        (["nope.echo"], 1, "capsule: error: feature 'nope': is not part of app"),
        (["echo.nope"], 1, "capsule: error: feature 'echo': has no service 'nope'"),
        (["echo.echo", "{not json"], 2, "capsule call: error: JSON is not valid JSON"),
        (["echo", "1"], 2, "capsule call: error: 'echo' is not FEATURE.SERVICE"),
    ],
)
def test_a_failed_call_exits_non_zero_with_one_line(
    app_run: Run, args: list[str], status: int, message: str
) -> None:
    result = capsule("call", "--app", app_run.name, *args)
    assert result.returncode == status
    assert result.stdout == ""
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1


def test_stop_start_and_restart_a_feature(app_run: Run) -> None:
    before = _features(app_run)["spare"]["pid"]
    stopped = capsule("stop", "--app", app_run.name, "spare")
    assert (stopped.returncode, stopped.stdout) == (0, "spare: stopped\n"), stopped.stderr
    spare = _features(app_run)["spare"]
    assert (spare["state"], spare["pid"]) == ("stopped", None)
    refused = capsule("call", "--app", app_run.name, "spare.ping")
    assert refused.returncode == 1
    assert "feature 'spare': is stopped" in refused.stderr

    started = capsule("start", "--app", app_run.name, "spare")
    assert (started.returncode, started.stdout) == (0, "spare: running\n"), started.stderr
    middle = _features(app_run)["spare"]["pid"]
    assert middle not in {None, before}

    restarted = capsule("restart", "--app", app_run.name, "spare")
    assert (restarted.returncode, restarted.stdout) == (0, "spare: running\n"), restarted.stderr
    after = _features(app_run)["spare"]
    assert after["state"] == "running"
    assert after["pid"] not in {None, before, middle}
    assert capsule("call", "--app", app_run.name, "spare.ping").stdout == '"pong"\n'

    unknown = capsule("stop", "--app", app_run.name, "nope")
    assert unknown.returncode == 1
    assert "is not part of app" in unknown.stderr

    def operated() -> list[dict[str, object]] | None:
        lines = _control_lines(app_run, "operate")
        first = next(  # this test's first action; earlier tests of the module made calls
            (
                i
                for i, line in enumerate(lines)
                if (line["request"], line["feature"]) == ("stop", "spare")
            ),
            None,
        )
        mine = [] if first is None else lines[first:]
        return mine if len(mine) >= 6 else None  # stop, call, start, restart, call, stop

    done = wait_for("the control actions in the audit log", operated)
    assert [(line["request"], line["feature"]) for line in done] == [
        ("stop", "spare"),
        ("call", "spare"),
        ("start", "spare"),
        ("restart", "spare"),
        ("call", "spare"),
        ("stop", "nope"),
    ]
    assert done[1]["reason"] == "call through the control socket: FeatureUnavailableError"
    assert done[3]["reason"] == "restart through the control socket: done"


def test_top_once_shows_one_frame_with_rates(app_run: Run) -> None:
    result = capsule("top", "--app", app_run.name, "--once", "--interval", "0.3")
    assert result.returncode == 0, result.stderr
    head, columns, *rows = result.stdout.splitlines()
    assert head.startswith(f"app {app_run.name}  pid {app_run.pid}")
    assert columns.split()[-3:] == ["MSG/S", "CALL/S", "CPU%"]
    assert [row.split()[0] for row in rows] == ["echo", "spare"]
    for row in rows:
        rate, calls, cpu = row.split()[-3:]
        assert float(rate) >= 0
        assert float(calls) >= 0
        assert float(cpu) >= 0


def test_run_logs_and_status_lines_as_json(app_run: Run) -> None:
    assert app_run.control is not None
    logged = [json.loads(line) for line in app_run.output().splitlines()]
    running_line = next(line for line in logged if line["event"] == "app running")
    assert running_line["app"] == app_run.name
    assert running_line["control"] == str(app_run.control.socket)
    assert {"timestamp", "level"} <= set(running_line)

    def status() -> list[dict[str, object]] | None:
        lines = app_run.stdout.read_text(encoding="utf-8").splitlines()
        found = [json.loads(line) for line in lines]
        return found if len(found) >= 4 else None  # two refreshes of two features

    found = wait_for("status lines", status)
    assert {line["event"] for line in found} == {"status"}
    assert {line["feature"] for line in found} == {"echo", "spare"}
    assert {"ts", "state", "pid", "restarts", "calls", "msgs_per_s", "memory"} <= set(found[-1])


#: what a hostile feature prints: retitle the terminal, clear it, paint the rest red
HOSTILE_TEXT = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m"


def test_json_log_lines_carry_feature_output_exactly(app_run: Run) -> None:
    said = capsule("call", "--app", app_run.name, "echo.shout", json.dumps({"text": HOSTILE_TEXT}))
    assert said.stdout == '"shouted"\n', said.stderr

    def printed() -> dict[str, object] | None:
        lines = [json.loads(line) for line in app_run.output().splitlines()]
        return next((line for line in lines if line["event"] == "feature output"), None)

    line = wait_for("the feature's output in the log", printed)
    assert (line["feature"], line["stream"], line["text"]) == ("echo", "stdout", HOSTILE_TEXT)


def test_console_log_lines_escape_control_characters_from_features(tmp_path: Path) -> None:
    with running(tmp_path) as run:  # console log lines on stderr
        said = capsule("call", "--app", run.name, "echo.shout", json.dumps({"text": HOSTILE_TEXT}))
        assert said.stdout == '"shouted"\n', said.stderr
        run.wait_logged("owned")
        shown = run.output()
    line = next(line for line in shown.splitlines() if "owned" in line)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\\x9b1m" in line, line
    assert not any(ch in shown for ch in "\x1b\x07\x9b"), repr(shown)


def test_a_terminal_gets_a_live_table(app_run: Run, tmp_path: Path) -> None:
    """On a terminal, capsule top (and capsule run, below) redraw a rich table in place."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "capsule", "top", "--app", app_run.name, "--interval", "0.2"],
            cwd=ROOT,
            stdin=terminal,
            stdout=terminal,
            stderr=subprocess.DEVNULL,
        ) as top:
            try:
                seen = bytearray()
                text = read_terminal(main, "CPU%", seen)
                assert "Ctrl-C to quit" in read_terminal(main, "Ctrl-C to quit", seen)
                assert "\x1b[" in seen.decode(errors="replace")  # drawn with escape sequences
                assert "spare" in text
                top.send_signal(signal.SIGINT)
                assert top.wait(WAIT) == 0
            finally:
                # Popen's __exit__ waits without a limit: never let it wait for a top
                # that is blocked writing to a terminal nobody reads any more.
                if top.poll() is None:
                    top.kill()

        run = start_run(tmp_path, terminal=terminal)
        try:
            run.wait_running()
            seen = bytearray()
            text = read_terminal(main, "(Ctrl-C stops the app)", seen)
            assert f"app {run.name}" in text
            assert "FEATURE" in text
            assert "app running" not in text  # the log lines stay in the redirected stderr
            run.signal(signal.SIGINT)
            assert run.wait_exit() == 0
        finally:
            if run.process.poll() is None:
                run.process.kill()
                run.wait_exit()
    finally:
        os.close(main)
        os.close(terminal)
    assert "app running" in run.output()
    assert "app stopped" in run.output()


# -- the audit log of a running app -------------------------------------------------------


def test_audit_follow_streams_the_running_apps_log(app_run: Run) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "capsule", "audit", "--follow", "--app", app_run.name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as follow:
        try:
            denied = capsule("call", "--app", app_run.name, "echo.trespass")
            assert denied.stdout == '"CapabilityDeniedError"\n', denied.stderr
            lines = lines_until(
                follow.stdout,
                lambda lines: any("icc:call:spare.other" in line for line in lines),
            )
        finally:
            follow.terminate()
            follow.wait(WAIT)
    assert any(" admit " in f" {line} " and "echo" in line for line in lines), lines
    deny = next(line for line in lines if "icc:call:spare.other" in line)
    assert deny.split()[1:3] == ["deny", "echo"]

    once = capsule("audit", "--app", app_run.name, "--denied")
    assert once.returncode == 0, once.stderr
    assert "icc:call:spare.other" in once.stdout
    both = capsule("audit", "--app", app_run.name, str(app_run.audit))
    assert both.returncode == 2
    assert _features(app_run)["echo"]["denied"] >= 1


# -- the control socket ------------------------------------------------------------------


def test_control_files_are_private_to_the_user(app_run: Run) -> None:
    control = app_run.control
    assert control is not None
    assert control.directory.parent == runtime_base()
    assert control.directory.name == control.run
    sock = control.socket.lstat()
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o600
    for path in (control.secret_path, control.directory / "control.json"):
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(control.directory.lstat().st_mode) == 0o700
    secret = control.secret_path.read_text(encoding="ascii").strip()
    assert len(bytes.fromhex(secret)) == 32


@pytest.mark.parametrize("secret", ["0" * 64, "", "é" * 10, "x" * 128])
def test_a_wrong_admin_secret_is_refused(app_run: Run, secret: str) -> None:
    control = app_run.control
    assert control is not None
    with ControlClient(control, secret=secret) as client, pytest.raises(ControlRefusedError):
        client.status()
    with ControlClient(control) as client:
        assert client.status().app == app_run.name  # the right secret still works
    app_run.wait_logged('"control request refused"')
    refused = wait_for(
        "the refusal in the audit log", lambda: _control_lines(app_run, "refuse") or None
    )
    assert (refused[0]["feature"], refused[0]["reason"]) == ("@control", "wrong admin secret")


def _control_lines(run: Run, decision: str) -> list[dict[str, object]]:
    """The audit log's control-socket lines with ``decision``, in order."""
    try:
        text = run.audit.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e for e in events if e["event"] == "control" and e["decision"] == decision]


def _raw_exchange(control: RunningApp, data: bytes) -> tuple[Failure | None, bytes]:
    """Send ``data`` on a fresh connection; the Failure answered, and what followed it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(control.socket))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    if not received:
        return None, b""
    size = int.from_bytes(received[:4], "big")
    response = decode_response(received[4 : 4 + size])
    assert isinstance(response, Failure)
    return response, received[4 + size :]


def test_bad_frames_are_refused_and_the_socket_keeps_serving(app_run: Run) -> None:
    control = app_run.control
    assert control is not None
    oversized, rest = _raw_exchange(control, (MAX_REQUEST + 1).to_bytes(4, "big"))
    assert oversized is not None
    assert (oversized.kind, rest) == ("ProtocolError", b"")
    assert "exceeds" in oversized.message
    garbage, _ = _raw_exchange(control, (5).to_bytes(4, "big") + b"\xc1\xc1\xc1\xc1\xc1")
    assert garbage is not None
    assert garbage.kind == "ProtocolError"
    bogus = Status(token="x")  # noqa: S106 - a wrong secret on purpose
    unknown = encode(bogus, limit=MAX_REQUEST).replace(b"status", b"pickle")
    refused, _ = _raw_exchange(control, unknown)
    assert refused is not None
    assert refused.kind == "ProtocolError"
    truncated, _ = _raw_exchange(control, (100).to_bytes(4, "big") + b"\x80")
    assert truncated is None  # the client gave up mid-frame: nothing to answer
    assert _ps(app_run)["app"] == app_run.name


def test_a_feature_cannot_see_or_reach_the_control_socket(app_run: Run) -> None:
    """THREATS 8: the runtime directory is never in a view, so the control socket, its
    secret and the run directory do not exist inside a container."""
    control = app_run.control
    assert control is not None
    paths = paths_of(control)
    for path in paths:
        assert Path(path).exists()  # they do exist on the host
    result = capsule("call", "--app", app_run.name, "echo.probe", json.dumps({"paths": paths}))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {f"{op} {path}": "ENOENT" for path in paths for op in ("stat", "connect")}


# -- choosing the app --------------------------------------------------------------------


def test_commands_say_when_no_such_app_runs() -> None:
    for command in (["ps"], ["top", "--once"], ["call", "x.y"], ["stop", "x"], ["audit"]):
        result = capsule(*command, "--app", "clitest-not-running")
        assert result.returncode == 1, command
        assert result.stderr.startswith(
            "capsule: error: no running app is called 'clitest-not-running'"
        ) or result.stderr.startswith("capsule: error: no capsule app is running"), result.stderr
        assert result.stderr.count("\n") == 1


# -- starting and stopping ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda sig: sig.name
)
def test_a_signal_stops_the_app_gracefully_and_leaves_nothing(
    tmp_path: Path, sig: signal.Signals
) -> None:
    run = start_run(tmp_path)
    try:
        control = run.wait_running()
        assert capsule("call", "--app", run.name, "echo.echo", "1").stdout == "1\n"
        run.signal(sig)
        assert run.wait_exit() == 0, run.output()
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.wait_exit()
    log = run.output()
    assert f"signal={sig.name}" in log
    assert "app stopped" in log
    assert "outlived" not in log  # every container ended when asked
    assert "ignored stop" not in log
    assert leftovers_of(control) == []
    assert all(app.pid != run.pid for app in running_apps())
    gone = capsule("ps", "--app", run.name)
    assert gone.returncode == 1


def test_a_second_signal_exits_at_once_and_the_next_start_cleans_up(tmp_path: Path) -> None:
    stuck = start_run(tmp_path, "--stop-timeout", "60", hang_on_stop=True)
    try:
        control = stuck.wait_running()
        stuck.signal(signal.SIGINT)
        stuck.wait_logged("stopping")
        stuck.signal(signal.SIGINT)  # spare's stop hook hangs: the stop would take 60 s
        assert stuck.wait_exit(timeout=20) == 130
    finally:
        if stuck.process.poll() is None:
            stuck.process.kill()
            stuck.wait_exit()
    assert "forced exit" in stuck.output()
    assert control.directory.exists()  # left behind: the next start removes it
    assert all(app.pid != stuck.pid for app in running_apps())  # but no longer listed

    with running(tmp_path) as after:
        assert not control.directory.exists()  # removed before the new run came up
        wait_for(
            "the forced run's processes to end",
            lambda: True if leftovers_of(control) == [] else None,
        )
    assert after.control is not None
    assert after.process.returncode == 0, after.output()
    assert leftovers_of(after.control) == []


def test_a_bad_app_fails_with_one_line(tmp_path: Path) -> None:
    app = tmp_path / "bad"
    app.mkdir()
    (app / "app.toml").write_text(
        '[app]\nname = "bad"\nfeatures = ["features/missing"]\n', encoding="utf-8"
    )
    result = capsule("run", str(app))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"capsule run: error: {app}/app.toml:3 [app.features[0]]: ")
    assert result.stderr.count("\n") == 1

    missing = capsule("run", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
