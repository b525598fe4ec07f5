"""Landlock restriction against the running kernel: each test confines a forked child and probes.

No mocks: the child calls ``restrict()`` for real, runs its probes and reports them as JSON
through a pipe; the parent asserts and always reaps it. Everything a restricted child uses is
imported here beforehand, since it can no longer read the standard library afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capsule._sandbox._landlock import ABI_FEATURES, PathRule, abi_version, restrict
from capsule.errors import SandboxError

ABI = abi_version()
CHILD_TIMEOUT = 30.0

needs_landlock = pytest.mark.skipif(
    ABI < 1, reason="Landlock is unsupported or disabled on this kernel (ABI 0)"
)
needs_abi_4 = pytest.mark.skipif(ABI < 4, reason=f"TCP rules need Landlock ABI 4, have {ABI}")
needs_abi_5 = pytest.mark.skipif(ABI < 5, reason=f"ioctl rules need Landlock ABI 5, have {ABI}")
needs_abi_6 = pytest.mark.skipif(ABI < 6, reason=f"scoping needs Landlock ABI 6, have {ABI}")

_PR_GET_NO_NEW_PRIVS = 39
_libc = ctypes.CDLL(None, use_errno=True)

Probe = Callable[[], dict[str, Any]]


def _errno_of(action: Callable[[], object]) -> int:
    """0 when ``action`` succeeds, else the errno of the OSError it raised."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def _read(path: Path | str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _write(path: Path | str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as handle:
        handle.write(data)


def _open_fds() -> list[int]:
    """The open descriptors, found without touching /proc (the child cannot after restrict)."""
    found = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


def _exec_status(path: str) -> int:
    """Execute ``path`` in a grandchild: 0 when it ran (and exited 0), else the execve errno."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(path, [path])  # noqa: S606 - the point is to execve a fixed file directly
        except OSError as exc:
            os._exit(exc.errno or 255)
        os._exit(255)  # pragma: no cover - execv does not return
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _in_child(rules: list[PathRule], probe: Probe, *, minimum_abi: int = 1) -> dict[str, Any]:
    """Fork; the child restricts itself, runs ``probe`` and reports; return the report."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            try:
                report: dict[str, Any] = {"abi": restrict(rules, minimum_abi=minimum_abi)}
            except SandboxError as exc:
                report = {"sandbox_error": str(exc)}
            report.update(probe())
            data = json.dumps(report).encode()
        except BaseException as exc:  # report anything rather than unwind into pytest
            data = json.dumps({"child_crashed": repr(exc)}).encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], CHILD_TIMEOUT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the sandboxed child did not report within {CHILD_TIMEOUT}s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert chunks, "the sandboxed child exited without a report"
    report = json.loads(b"".join(chunks))
    assert "child_crashed" not in report, report["child_crashed"]
    return report


def _restricted(rules: list[PathRule], probe: Probe) -> dict[str, Any]:
    report = _in_child(rules, probe)
    assert "sandbox_error" not in report, report["sandbox_error"]
    assert report["abi"] == ABI
    return report


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """Sibling directories, each with one file: ro (read rule), rw (read+write), outside."""
    dirs = {}
    for name in ("ro", "rw", "outside"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "file.txt").write_bytes(b"content of " + name.encode())
        dirs[name] = directory
    return dirs


def _system_rules() -> list[PathRule]:
    """Read and execute on the system's program and library directories (not symlinks)."""
    return [
        PathRule(candidate, execute=True)
        for candidate in ("/usr", "/bin", "/lib", "/lib64")
        if os.path.isdir(candidate) and not os.path.islink(candidate)
    ]


# -- the ABI -----------------------------------------------------------------------------------


def test_abi_version_is_available() -> None:
    if ABI == 0:
        pytest.skip("Landlock is unsupported or disabled on this kernel (ABI 0)")
    assert ABI >= 1


def test_abi_features_name_every_level_from_one() -> None:
    assert sorted(ABI_FEATURES) == list(range(1, len(ABI_FEATURES) + 1))
    assert len(ABI_FEATURES) >= 7
    assert "audit" in ABI_FEATURES[7]
    assert all(line and line == line.strip() for line in ABI_FEATURES.values())


def test_path_rule_defaults_to_read_only_and_is_frozen() -> None:
    rule = PathRule("/data")
    assert (rule.read, rule.write, rule.execute, rule.ioctl) == (True, False, False, False)
    with pytest.raises(AttributeError):
        rule.write = True  # type: ignore[misc]


@needs_landlock
def test_minimum_abi_above_the_kernel_is_an_error() -> None:
    report = _in_child([], dict, minimum_abi=99)
    message = report["sandbox_error"]
    assert "99" in message
    assert f"ABI {ABI}" in message
    assert "lsm=" in message
    assert "5.13" in message


# -- files ---------------------------------------------------------------------------------------


@needs_landlock
def test_read_rule_allows_reading_beneath_and_nothing_outside(tree: dict[str, Path]) -> None:
    outside_system = "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd"

    def probe() -> dict[str, Any]:
        return {
            "read": _read(tree["ro"] / "file.txt").decode(),
            "list": sorted(os.listdir(tree["ro"])),
            "outside": _errno_of(lambda: _read(tree["outside"] / "file.txt")),
            "outside_list": _errno_of(lambda: os.listdir(tree["outside"])),
            "system": _errno_of(lambda: _read(outside_system)),
            "no_new_privs": _libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        }

    report = _restricted([PathRule(str(tree["ro"]))], probe)
    assert report["read"] == "content of ro"
    assert report["list"] == ["file.txt"]
    assert report["outside"] == errno.EACCES
    assert report["outside_list"] == errno.EACCES
    assert report["system"] == errno.EACCES
    assert report["no_new_privs"] == 1


@needs_landlock
def test_a_rule_given_a_descriptor_covers_that_directory_not_what_its_path_names_now(
    tree: dict[str, Path],
) -> None:
    """The view server adds its rules from the directories it serves: a rule with ``fd``
    covers the directory opened, even after its path was swapped for a link elsewhere."""
    ro = tree["ro"]
    fd = os.open(ro, os.O_PATH | os.O_DIRECTORY)
    ro.rename(ro.with_name("ro-moved"))
    ro.symlink_to(tree["outside"])

    def probe() -> dict[str, Any]:
        return {
            "held": _read(Path(f"/proc/self/fd/{fd}") / "file.txt").decode(),
            "moved": _read(ro.with_name("ro-moved") / "file.txt").decode(),
            "path now": _errno_of(lambda: _read(ro / "file.txt")),
        }

    try:
        report = _restricted([PathRule(str(ro), fd=fd)], probe)
    finally:
        os.close(fd)
    assert report["held"] == "content of ro"
    assert report["moved"] == "content of ro"
    assert report["path now"] == errno.EACCES


@needs_landlock
def test_write_needs_a_write_rule(tree: dict[str, Path]) -> None:
    ro, rw = tree["ro"], tree["rw"]

    def probe() -> dict[str, Any]:
        return {
            "ro_overwrite": _errno_of(lambda: _write(ro / "file.txt", b"x")),
            "ro_append": _errno_of(lambda: _write(ro / "file.txt", b"x", "ab")),
            "ro_create": _errno_of(lambda: _write(ro / "new.txt", b"x")),
            "ro_mkdir": _errno_of(lambda: os.mkdir(ro / "sub")),
            "ro_unlink": _errno_of(lambda: os.unlink(ro / "file.txt")),
            "ro_truncate": _errno_of(lambda: os.truncate(ro / "file.txt", 0)),
            "rw_overwrite": _errno_of(lambda: _write(rw / "file.txt", b"rewritten")),
            "rw_create": _errno_of(lambda: _write(rw / "new.txt", b"new")),
            "rw_truncate": _errno_of(lambda: os.truncate(rw / "new.txt", 1)),
            "rw_rename": _errno_of(lambda: os.rename(rw / "new.txt", rw / "renamed.txt")),
            "rw_mkdir": _errno_of(lambda: os.mkdir(rw / "sub")),
            "rw_symlink": _errno_of(lambda: os.symlink("file.txt", rw / "link")),
            "rw_rename_across": _errno_of(lambda: os.rename(rw / "file.txt", rw / "sub" / "f")),
            "rw_unlink": _errno_of(lambda: os.unlink(rw / "link")),
            "rw_rmdir": _errno_of(lambda: os.rmdir(rw / "sub")),
            "rw_read": _read(rw / "renamed.txt").decode(),
        }

    report = _restricted([PathRule(str(ro)), PathRule(str(rw), write=True)], probe)
    for key in ("ro_overwrite", "ro_append", "ro_create", "ro_mkdir", "ro_unlink", "ro_truncate"):
        assert report[key] == errno.EACCES, key
    for key in ("rw_overwrite", "rw_create", "rw_truncate", "rw_rename", "rw_mkdir"):
        assert report[key] == 0, key
    for key in ("rw_symlink", "rw_unlink", "rw_rmdir"):
        assert report[key] == 0, key
    # a write rule never grants REFER: links and renames across directories are refused
    assert report["rw_rename_across"] == (errno.EXDEV if ABI >= 2 else errno.EACCES)
    assert report["rw_read"] == "n"
    assert (tree["rw"] / "file.txt").read_bytes() == b"rewritten"
    assert (tree["ro"] / "file.txt").read_bytes() == b"content of ro"


@needs_landlock
def test_write_rule_creates_no_fifo_socket_or_device(tree: dict[str, Path]) -> None:
    rw = tree["rw"]

    def bind_unix_socket() -> None:
        os.chdir(rw)  # a relative name keeps the address short enough for sun_path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind("sock")

    def probe() -> dict[str, Any]:
        return {
            "fifo": _errno_of(lambda: os.mkfifo(rw / "fifo")),
            "socket": _errno_of(bind_unix_socket),
            "char": _errno_of(lambda: os.mknod(rw / "null", 0o600 | 0o020000, os.makedev(1, 3))),
            "regular": _errno_of(lambda: _write(rw / "plain", b"")),
        }

    report = _restricted([PathRule(str(rw), write=True)], probe)
    assert report == {
        "abi": ABI,
        "fifo": errno.EACCES,
        "socket": errno.EACCES,
        "char": errno.EACCES,
        "regular": 0,
    }
    assert sorted(p.name for p in rw.iterdir()) == ["file.txt", "plain"]


@needs_landlock
def test_execute_needs_an_execute_rule(tmp_path: Path) -> None:
    true = os.path.realpath(shutil.which("true") or "/bin/true")
    rw = tmp_path / "rw"
    runnable = tmp_path / "runnable"
    for directory in (rw, runnable):
        directory.mkdir()
        shutil.copy(true, directory / "true")

    def probe() -> dict[str, Any]:
        return {
            "write_only_dir": _exec_status(str(rw / "true")),
            "execute_dir": _exec_status(str(runnable / "true")),
        }

    rules = [
        *_system_rules(),
        PathRule(str(rw), write=True),
        PathRule(str(runnable), execute=True),
    ]
    report = _restricted(rules, probe)
    assert report["write_only_dir"] == errno.EACCES
    assert report["execute_dir"] == 0


@needs_landlock
def test_rule_on_a_single_file(tmp_path: Path) -> None:
    def probe() -> dict[str, Any]:
        return {
            "write_null": _errno_of(lambda: _write("/dev/null", b"discarded")),
            "read_null": _errno_of(lambda: _read("/dev/null")),
            "read_zero": _errno_of(lambda: os.close(os.open("/dev/zero", os.O_RDONLY))),
            "list_dev": _errno_of(lambda: os.listdir("/dev")),
        }

    report = _restricted([PathRule("/dev/null", read=False, write=True)], probe)
    assert report["write_null"] == 0
    assert report["read_null"] == errno.EACCES
    assert report["read_zero"] == errno.EACCES
    assert report["list_dev"] == errno.EACCES


@needs_abi_5
@pytest.mark.parametrize(("ioctl", "expected"), [(False, errno.EACCES), (True, errno.ENOTTY)])
def test_device_ioctl_needs_an_ioctl_rule(ioctl: bool, expected: int) -> None:
    def tcgets() -> None:
        fd = os.open("/dev/null", os.O_WRONLY)
        try:
            fcntl.ioctl(fd, termios.TCGETS, bytes(64))
        finally:
            os.close(fd)

    report = _restricted(
        [PathRule("/dev/null", read=False, write=True, ioctl=ioctl)],
        lambda: {"tcgets": _errno_of(tcgets)},
    )
    assert report["tcgets"] == expected


# -- network and scopes ----------------------------------------------------------------------------


@needs_abi_4
def test_tcp_connect_and_bind_are_denied() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def connect() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
                client.connect(("127.0.0.1", port))

        def bind() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
                server.bind(("127.0.0.1", 0))

        report = _restricted([], lambda: {"connect": _errno_of(connect), "bind": _errno_of(bind)})
    assert report["connect"] == errno.EACCES
    assert report["bind"] == errno.EACCES


@needs_abi_6
def test_abstract_unix_socket_outside_the_domain_is_unreachable() -> None:
    outside_name = f"\0capsule-landlock-test-{os.getpid()}-outside"
    inside_name = f"\0capsule-landlock-test-{os.getpid()}-inside"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(outside_name)
        listener.listen(1)

        def connect_outside() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(outside_name)

        def connect_inside() -> None:
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as own,
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
            ):
                own.bind(inside_name)
                own.listen(1)
                client.connect(inside_name)

        report = _restricted(
            [],
            lambda: {"outside": _errno_of(connect_outside), "inside": _errno_of(connect_inside)},
        )
    assert report["outside"] == errno.EPERM
    assert report["inside"] == 0


@needs_abi_6
def test_signals_outside_the_domain_are_denied() -> None:
    parent = os.getpid()

    def probe() -> dict[str, Any]:
        return {
            "parent": _errno_of(lambda: os.kill(parent, 0)),
            "self": _errno_of(lambda: os.kill(os.getpid(), 0)),
        }

    report = _restricted([], probe)
    assert report["parent"] == errno.EPERM
    assert report["self"] == 0


# -- errors and descriptors --------------------------------------------------------------------


@needs_landlock
def test_rule_on_a_symlink_is_an_error_naming_it(tree: dict[str, Path]) -> None:
    link = tree["rw"].parent / "link-to-ro"
    link.symlink_to(tree["ro"])
    report = _in_child([PathRule(str(link))], dict)
    assert str(link) in report["sandbox_error"]
    assert "symbolic link" in report["sandbox_error"]


@needs_landlock
def test_rule_on_a_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    report = _in_child([PathRule(str(tmp_path)), PathRule(str(missing))], dict)
    assert str(missing) in report["sandbox_error"]
    assert "does not exist" in report["sandbox_error"]


@needs_landlock
@pytest.mark.parametrize("outcome", ["restricted", "missing path", "symlink"])
def test_restrict_closes_every_descriptor_it_opens(tmp_path: Path, outcome: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    last = {"restricted": "dir", "missing path": "missing", "symlink": "link"}[outcome]
    rules = [PathRule(str(tmp_path / "dir")), PathRule("/dev/null"), PathRule(str(tmp_path / last))]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            before = _open_fds()
            with contextlib.suppress(SandboxError):
                restrict(rules)
            after = _open_fds()
            os.write(write_end, json.dumps({"before": before, "after": after}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        data = os.read(read_end, 65536)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(data)
    assert report["before"] == report["after"]
