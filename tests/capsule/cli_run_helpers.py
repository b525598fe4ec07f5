"""``capsule run`` in a subprocess for the CLI tests: a small app of real bundle files, the
wait for its control socket, and what a run left behind once it ended.

The features are real modules on disk (an inline Feature cannot reach a separate process):
TestApp writes the manifests, then each bundle's ``inline.py`` is replaced by the code below.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fusefs
from capsule._control._runs import RunningApp, running_apps
from capsule._sandbox._cgroup_detect import detect
from capsule._supervisor._supervisor import container_uids
from capsule.testing import TestApp

ROOT = Path(__file__).resolve().parents[2]
#: how long a test waits for a run to come up, answer or end before it fails
WAIT = 60.0

T = TypeVar("T")

ECHO = '''"""The CLI tests' main feature: echo, fail, probe host paths, call outside its grant."""

import errno
import os
import socket

from capsule.feature import Feature

feature = Feature()


def _errno(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


@feature.service("echo")
async def echo(ctx, request):
    return request


@feature.service("fail")
async def fail(ctx, request):
    raise ValueError("asked to fail")


@feature.service("shout")
async def shout(ctx, request):
    """Write the text asked for to stdout: escape sequences a hostile feature would print."""
    print(request["text"], flush=True)
    return "shouted"


@feature.service("probe")
async def probe(ctx, request):
    """stat and connect() each path: what this container can see of the host."""
    found = {}
    for path in request["paths"]:
        try:
            os.stat(path)
            found["stat " + path] = "ok"
        except OSError as exc:
            found["stat " + path] = _errno(exc)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            found["connect " + path] = "ok"
        except OSError as exc:
            found["connect " + path] = _errno(exc)
        finally:
            sock.close()
    return found


@feature.service("ping")
async def ping(ctx, request):
    """A call inside the grant (spare.ping)."""
    return await ctx.call("spare", "ping", request)


@feature.service("trespass")
async def trespass(ctx, request):
    """A call outside the grant (spare.other): the broker denies it."""
    try:
        await ctx.call("spare", "other", {})
    except Exception as exc:
        return type(exc).__name__
    return "allowed"
'''

SPARE = '''"""The CLI tests' second feature: stopped, started and restarted by the tests."""

import anyio

from capsule.feature import Feature

feature = Feature()
HANG_ON_STOP = {hang}


@feature.service("ping")
async def ping(ctx, request):
    return "pong"


@feature.service("other")
async def other(ctx, request):
    return "never granted to echo"


@feature.on_stop
async def on_stop(ctx):
    if HANG_ON_STOP:
        await anyio.sleep_forever()
'''


async def _placeholder(ctx: Any, request: Any) -> Any:
    return request  # never runs: the bundle's module on disk replaces it


def write_app(
    root: Path,
    name: str,
    *,
    hang_on_stop: bool = False,
    plugins: dict[str, Any] | None = None,
) -> Path:
    """An app ``name`` with features ``echo`` (may call ``spare.ping``) and ``spare``, and
    the ``[plugins]`` table ``plugins`` (none by default)."""
    app = TestApp(root, name=name)
    app.plugins = plugins
    echo = app.feature("echo", faults=False, policy={"call": ["spare.ping"]})
    for service in ("echo", "fail", "shout", "probe", "ping", "trespass"):
        echo.service(service)(_placeholder)
    spare = app.feature("spare", faults=False)
    for service in ("ping", "other"):
        spare.service(service)(_placeholder)
    path = app.write()
    (path / "features" / "echo" / "inline.py").write_text(ECHO, encoding="utf-8")
    spare_code = SPARE.replace("{hang}", repr(hang_on_stop))
    (path / "features" / "spare" / "inline.py").write_text(spare_code, encoding="utf-8")
    return path


def unique_name() -> str:
    """An app name no other run on this machine uses (the runtime directory is shared)."""
    return f"clitest-{secrets.token_hex(4)}"


def capsule(
    *args: str, timeout: float = WAIT, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``capsule ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "capsule", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Run:
    """One ``capsule run`` subprocess and where its output goes."""

    name: str
    app_dir: Path
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    audit: Path
    control: RunningApp | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def wait_running(self) -> RunningApp:
        """Wait until the run's control socket is up (failing at once if the run died)."""

        def found() -> RunningApp | None:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"capsule run exited with {self.process.returncode}:\n{self.output()}"
                )
            return next((a for a in running_apps() if a.pid == self.pid), None)

        self.control = wait_for(f"the control socket of {self.name}", found)
        return self.control

    def wait_logged(self, text: str) -> None:
        wait_for(f"{text!r} in the log", lambda: True if text in self.output() else None)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)


def start_run(
    tmp_path: Path,
    *options: str,
    name: str | None = None,
    hang_on_stop: bool = False,
    terminal: int | None = None,
    plugins: dict[str, Any] | None = None,
) -> Run:
    """Write the test app under ``tmp_path`` and start ``capsule run`` on it (not waited for);
    its stdin and stdout are ``terminal`` when given (a pty), a file otherwise."""
    name = name or unique_name()
    app_dir = write_app(tmp_path / name, name, hang_on_stop=hang_on_stop, plugins=plugins)
    stdout, stderr, audit = (tmp_path / f"{name}.{ext}" for ext in ("out", "err", "jsonl"))
    command = [
        *(sys.executable, "-m", "capsule", "run", str(app_dir)),
        *("--audit", str(audit), "--state-dir", str(tmp_path / "state")),
        *options,
    ]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=terminal,
            stdout=out if terminal is None else terminal,
            stderr=err,
        )
    return Run(name, app_dir, process, stdout, stderr, audit)


@contextmanager
def running(tmp_path: Path, *options: str, **kwargs: Any) -> Iterator[Run]:
    """A run that is up for the block and stopped (SIGTERM, then SIGKILL) after it."""
    run = start_run(tmp_path, *options, **kwargs)
    try:
        run.wait_running()
        yield run
    finally:
        if run.process.poll() is None:
            run.signal(signal.SIGTERM)
            try:
                run.wait_exit()
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.wait_exit()


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f]


def _processes_of(run: RunningApp) -> list[str]:
    """Processes of a (finished) run: its containers' uids (as root) or its run name in argv."""
    uids = container_uids(run.pid) if os.geteuid() == 0 else range(0)
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            status = (entry / "status").read_text(encoding="ascii")
            uid = next(int(line.split()[1]) for line in status.splitlines() if "Uid:" in line)
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if uid in uids or run.run in cmdline:
                found.append(f"process {entry.name} (uid {uid}): {cmdline.strip()}")
    return found


def leftovers_of(run: RunningApp) -> list[str]:
    """What an ended run left behind: its run directory, mounts, cgroups and processes."""
    found: list[str] = []
    if run.directory.exists():
        found.append(f"run directory {run.directory}")
    prefix = str(run.directory) + "/"
    found += [f"mount {p}" for p in _mount_points() if p.startswith(prefix)]
    found += [f"fuse mount {p}" for p, _ in fusefs.fuse_mounts_beneath(str(run.directory))]
    for root in detect().roots.values():
        group = Path(root) / "capsule" / run.run
        if group.exists():
            found.append(f"cgroup {group}")
    return found + _processes_of(run)


def lines_until(
    stream: Any, want: Callable[[list[str]], bool], *, timeout: float = WAIT
) -> list[str]:
    """Lines read from a pipe until ``want(lines)`` holds; fails after ``timeout``."""
    import selectors  # noqa: PLC0415 - only the follow tests need it

    lines: list[str] = []
    pending = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not want(lines):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"timed out; read so far: {lines}")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the stream ended; read so far: {lines}")
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines += [line.decode() for line in complete]
    return lines


def paths_of(control: RunningApp) -> Sequence[str]:
    """The control files of a run, and the directories that hold them."""
    return [
        str(control.socket),
        str(control.secret_path),
        str(control.directory / "control.json"),
        str(control.directory),
        str(control.directory.parent),
    ]


def read_terminal(fd: int, want: str, seen: bytearray) -> str:
    """What a terminal shows, with escape sequences removed, once it holds ``want``."""

    def shown() -> str | None:
        if select.select([fd], [], [], 0.05)[0]:
            seen.extend(os.read(fd, 65536))
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
        return text if want in text else None

    return wait_for(f"{want!r} on the terminal", shown)
