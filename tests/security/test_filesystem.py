"""THREATS.md "File system and mounts" (items 1-9), attacked from inside real containers.

The container's root is a tmpfs with read-only binds of the Python runtime and the bundle at
``/bundle``; here, a read-only volume at ``/data`` and ``/capsule/``, both bound from the
container's own fusefs view; a private size-limited ``/tmp``; a fresh ``/proc``; a minimal
``/dev``. Each test runs its attacks in one container and compares what the kernel (or the view's
file-system server) answered (an errno name, or ``ok``) with the failure the defence is meant to
produce. ``tests/capsule/supervisor/test_views.py`` and ``tests/fusefs/`` attack the views
themselves.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio

import capsule
from capsule.feature import Context
from capsule.testing import TestApp, leftovers
from capsule.testing._probes import exec_outcome, raw_syscall, syscall32, tiny_elf
from tests.security._host import (
    RESTART_AT_ONCE,
    UID_FLOOR,
    container_host_uid,
    crash_signals,
    descendants,
    needs_x86_64,
    sandbox_status,
    zygote_pid,
)

#: the container's own private tmpfs (never the host's /tmp, which is not in the view).
_TMP: Final = "/tmp"  # noqa: S108
_WORDS: Final = {"fs": [{"path": "/data", "volume": "words", "mode": "ro"}]}
_DEVICES: Final = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}
_WRITE_REFUSED: Final = frozenset({"EROFS", "EACCES"})


# --- run inside the container (shipped by value with the handlers) ----------------------------


def _outcome(action: Callable[[], object]) -> str:
    """``ok`` if ``action`` succeeds, else the errno name of the OSError it raised."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return "ok"


def _sys(nr: int, *args: int) -> str:
    """A raw syscall's outcome: ``ok`` or the errno name."""
    _, err = raw_syscall(nr, *args)
    return errno.errorcode.get(err, f"errno {err}") if err else "ok"


def _read(path: str | int) -> bytes:
    with open(path, "rb", closefd=not isinstance(path, int)) as file:
        return file.read(64)


def _write(path: str, data: bytes = b"owned") -> None:
    with open(path, "wb") as file:
        file.write(data)


def _reopen_for_writing(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY))
    finally:
        os.close(fd)


def _mountinfo() -> list[dict[str, str]]:
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        for line in file:
            fields, _, tail = line.partition(" - ")
            parts = fields.split()
            fstype = tail.split()[0]
            mounts.append(
                {"root": parts[3], "point": parts[4], "options": parts[5], "fstype": fstype}
            )
    return mounts


def _attack_host_files(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"read {path}": _outcome(partial(_read, path)) for path in request["host_paths"]
    }
    out["list /"] = _outcome(partial(os.listdir, "/"))
    out["read /data/words.txt"] = _read("/data/words.txt").decode()
    with open("/proc/self/uid_map", encoding="ascii") as file:
        out["uid_map"] = file.read().split()
    with open("/proc/self/gid_map", encoding="ascii") as file:
        out["gid_map"] = file.read().split()
    out["uid"] = os.getuid()
    return out


def _attack_writes(_: object) -> dict[str, str]:
    stdlib = os.path.dirname(os.__file__)
    targets = {
        "create in /bundle": "/bundle/evil.py",
        "overwrite /bundle/capsule.toml": "/bundle/capsule.toml",
        "create in /data": "/data/evil.txt",
        "overwrite /data/words.txt": "/data/words.txt",
        "overwrite the interpreter": sys.executable,
        "overwrite /proc/self/exe": "/proc/self/exe",
        "create in the stdlib": os.path.join(stdlib, "evil.py"),
        "overwrite os.py": os.__file__,
        "overwrite capsule": capsule.__file__,
        "create at /": "/evil",
        "create in /dev": "/dev/evil",
    }
    out = {f"write: {name}": _outcome(partial(_write, path)) for name, path in targets.items()}
    out["chmod os.py"] = _outcome(partial(os.chmod, os.__file__, 0o777))
    out["unlink os.py"] = _outcome(partial(os.unlink, os.__file__))
    out["rename os.py"] = _outcome(partial(os.rename, os.__file__, os.__file__ + ".bak"))
    out["truncate os.py"] = _outcome(partial(os.truncate, os.__file__, 0))
    out["utime os.py"] = _outcome(partial(os.utime, os.__file__, (0, 0)))
    out["mkdir /bundle/evil"] = _outcome(partial(os.mkdir, "/bundle/evil"))
    out["mkdir /evil"] = _outcome(partial(os.mkdir, "/evil"))
    out["reopen /bundle/capsule.toml for writing via /proc/self/fd"] = _outcome(
        partial(_reopen_for_writing, "/bundle/capsule.toml")
    )
    out["reopen os.py for writing via /proc/self/fd"] = _outcome(
        partial(_reopen_for_writing, os.__file__)
    )
    out["control: write /tmp/ok"] = _outcome(partial(_write, f"{_TMP}/ok"))
    return out


def _attack_exec(_: object) -> dict[str, str]:
    tool = f"{_TMP}/tool"
    _write(tool, tiny_elf(42))
    out = {"chmod 0755 /tmp/tool": _outcome(partial(os.chmod, tool, 0o755))}
    out["exec /tmp/tool"] = exec_outcome(tool)
    fd = os.open(tool, os.O_RDONLY)
    out["exec /tmp/tool through /proc/self/fd"] = exec_outcome(f"/proc/self/fd/{fd}")
    out["fexecve /tmp/tool"] = exec_outcome(fd)
    out["mmap /tmp/tool PROT_EXEC"] = _outcome(
        partial(mmap.mmap, fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)
    )
    os.close(fd)
    interpreter = f"{_TMP}/python"
    with open(sys.executable, "rb") as source:
        _write(interpreter, source.read())
    os.chmod(interpreter, 0o755)  # noqa: S103 - making it executable is the attack
    out["exec a copy of the interpreter in /tmp"] = exec_outcome(interpreter)
    return out


def _attack_memfd_exec(_: object) -> str:
    fd = os.memfd_create("payload")
    os.write(fd, tiny_elf(42))
    return exec_outcome(fd)


def _attack_links(request: dict[str, Any]) -> dict[str, str]:
    out = {f"read {path}": _outcome(partial(_read, path)) for path in request["planted_links"]}
    out["control: read /data/inner-link"] = _read("/data/inner-link").decode()
    readable = {
        "to-shadow": "/etc/shadow",
        "to-hostname": "../../../../../../etc/hostname",
        "to-proc-root": "/proc/self/root/../../../etc/passwd",
        "to-host-file": request["host_file"],
    }
    for name, target in readable.items():
        os.symlink(target, f"{_TMP}/{name}")
        out[f"read /tmp/{name}"] = _outcome(partial(_read, f"{_TMP}/{name}"))
    os.symlink("/bundle", f"{_TMP}/to-bundle")
    os.symlink("/data", f"{_TMP}/to-data")
    out["write /tmp/to-bundle/evil"] = _outcome(partial(_write, f"{_TMP}/to-bundle/evil"))
    out["write /tmp/to-data/words.txt"] = _outcome(partial(_write, f"{_TMP}/to-data/words.txt"))
    for path in (
        f"{_TMP}/../../../etc/hostname",
        "/bundle/../../../../etc/passwd",
        "/data/../../../../etc/passwd",
        "/proc/self/root/etc/hostname",
        "/proc/1/root/../../etc/shadow",
        "/proc/self/cwd/../etc/passwd",
    ):
        out[f"read {path}"] = _outcome(partial(_read, path))
    _write(f"{_TMP}/mine")
    out["hardlink os.py into /tmp"] = _outcome(partial(os.link, os.__file__, f"{_TMP}/os.py"))
    out["hardlink /bundle file into /tmp"] = _outcome(
        partial(os.link, "/bundle/capsule.toml", f"{_TMP}/bundle.toml")
    )
    out["hardlink /data file into /tmp"] = _outcome(
        partial(os.link, "/data/words.txt", f"{_TMP}/words.txt")
    )
    out["hardlink /tmp file into /bundle"] = _outcome(
        partial(os.link, f"{_TMP}/mine", "/bundle/mine")
    )
    out["rename /tmp file into /bundle"] = _outcome(
        partial(os.rename, f"{_TMP}/mine", "/bundle/mine")
    )
    out["rename /bundle file into /tmp"] = _outcome(
        partial(os.rename, "/bundle/capsule.toml", f"{_TMP}/capsule.toml")
    )
    out["rename inside /data"] = _outcome(
        partial(os.rename, "/data/words.txt", "/data/renamed.txt")
    )
    out["control: rename inside /tmp"] = _outcome(
        partial(os.rename, f"{_TMP}/mine", f"{_TMP}/renamed")
    )
    return out


def _attack_devices(_: object) -> dict[str, Any]:
    absent = [
        *("mem", "kmem", "port", "kmsg", "fuse", "ptmx", "tty", "console", "full", "kvm"),
        *("loop-control", "loop0", "net/tun", "shm", "pts", "mqueue", "vda", "sda", "nvme0"),
        *("uinput", "vhost-net", "cpu", "hwrng", "dri", "input", "snd", "autofs", "mapper"),
        *("rtc0", "watchdog"),
    ]
    out: dict[str, Any] = {
        f"/dev/{name}": _outcome(partial(os.stat, f"/dev/{name}")) for name in absent
    }
    devices = {}
    for name in _DEVICES:
        info = os.stat(f"/dev/{name}")
        devices[name] = [
            stat.S_ISCHR(info.st_mode),
            os.major(info.st_rdev),
            os.minor(info.st_rdev),
        ]
    out["devices"] = devices
    out["mknod char /tmp/mem"] = _outcome(
        partial(os.mknod, f"{_TMP}/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))
    )
    out["mknod block /tmp/disk"] = _outcome(
        partial(os.mknod, f"{_TMP}/disk", stat.S_IFBLK | 0o600, os.makedev(254, 0))
    )
    out["mknod fifo /tmp/fifo"] = _outcome(partial(os.mkfifo, f"{_TMP}/fifo"))
    out["control: mknod regular /tmp/plain"] = _outcome(
        partial(os.mknod, f"{_TMP}/plain", stat.S_IFREG | 0o600)
    )
    _write(f"{_TMP}/suid")
    out["chmod 4755 /tmp/suid"] = _outcome(partial(os.chmod, f"{_TMP}/suid", 0o4755))
    out["suid bit kept"] = bool(os.stat(f"{_TMP}/suid").st_mode & stat.S_ISUID)
    with open("/proc/self/status", encoding="ascii") as file:
        fields = dict(line.split(":", 1) for line in file)
    keys = ("NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    out["status"] = {key: fields[key].strip() for key in keys}
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    result = libc.prctl(38, 0, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS 0: it cannot be unset
    out["clear no_new_privs"] = "ok" if result == 0 else errno.errorcode[ctypes.get_errno()]
    out["mounts"] = _mountinfo()
    return out


def _cstr(text: str, keep: list[ctypes.Array[ctypes.c_char]]) -> int:
    """The address of a NUL-terminated copy of ``text``, kept alive in ``keep``."""
    buffer = ctypes.create_string_buffer(text.encode())
    keep.append(buffer)
    address = ctypes.cast(buffer, ctypes.c_void_p).value
    assert address is not None
    return address


def _attack_mounts(_: object) -> dict[str, str]:
    keep: list[ctypes.Array[ctypes.c_char]] = []
    target = f"{_TMP}/mnt"
    os.mkdir(target)
    s = partial(_cstr, keep=keep)
    ms_bind, ms_rec, ms_remount = 0x1000, 0x4000, 0x20
    attr = (ctypes.c_uint64 * 4)(0, 1, 0, 0)  # mount_attr: clear MOUNT_ATTR_RDONLY
    attr_address = ctypes.cast(attr, ctypes.c_void_p).value or 0
    out = {
        "mount tmpfs": _sys(165, s("none"), s(target), s("tmpfs"), 0, 0),
        "mount proc": _sys(165, s("proc"), s(target), s("proc"), 0, 0),
        "mount overlay": _sys(
            165, s("overlay"), s(target), s("overlay"), 0, s("lowerdir=/bundle:/data")
        ),
        "mount fuse": _sys(165, s("fuse"), s(target), s("fuse"), 0, s("fd=0,rootmode=40000")),
        "mount cgroup v1 (release_agent)": _sys(
            165, s("cgroup"), s(target), s("cgroup"), 0, s("rdma")
        ),
        "mount cgroup2": _sys(165, s("cgroup2"), s(target), s("cgroup2"), 0, 0),
        "bind-mount /": _sys(165, s("/"), s(target), 0, ms_bind | ms_rec, 0),
        "remount / read-write": _sys(165, 0, s("/"), 0, ms_remount, 0),
        "umount2 /tmp": _sys(166, s(_TMP), 2),
        "fsopen tmpfs": _sys(430, s("tmpfs"), 0),
        "fspick /": _sys(433, -100, s("/"), 0),
        "open_tree / clone": _sys(428, -100, s("/"), 1 | 0x8000),
        "move_mount": _sys(429, -100, s("/bundle"), -100, s(target), 0),
        "mount_setattr / read-write": _sys(442, -100, s("/"), 0, attr_address, 32),
        "pivot_root": _sys(155, s(target), s(target)),
        "chroot": _outcome(partial(os.chroot, target)),
        "unshare a mount namespace": _sys(272, 0x0002_0000),
        "unshare user + mount namespaces": _sys(272, 0x1000_0000 | 0x0002_0000),
    }
    out["/sys/fs/cgroup"] = _outcome(partial(os.stat, "/sys/fs/cgroup"))
    return out


def _attack_proc(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pids": sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit()),
        "/proc/self": os.readlink("/proc/self"),
        "/sys": _outcome(partial(os.stat, "/sys")),
        "/sys/kernel": _outcome(partial(os.stat, "/sys/kernel")),
        "hostname": socket.gethostname(),
    }
    with open("/proc/1/status", encoding="ascii") as file:
        fields = dict(line.split(":", 1) for line in file)
    out["pid 1"] = {key: fields[key].split() for key in ("NSpid", "PPid")}
    for name, pid in request["host_pids"].items():
        out[f"/proc/{name}"] = _outcome(partial(os.stat, f"/proc/{pid}"))
    for path in (
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/hostname",
        "/proc/sysrq-trigger",
    ):
        out[f"write {path}"] = _outcome(partial(_write, path, b"|/tmp/x\n"))
    out["mounts"] = _mountinfo()
    return out


def _connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)


def _bind(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)


def _attack_unix_paths(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"connect {path}": _outcome(partial(_connect, path)) for path in request["sockets"]
    }
    out["bind /tmp/rendezvous.sock"] = _outcome(partial(_bind, f"{_TMP}/rendezvous.sock"))
    out["mounts"] = _mountinfo()
    return out


def _attack_fill(_: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    written = 0
    try:
        with open(f"{_TMP}/fill", "wb", buffering=0) as file:
            while True:
                written += file.write(b"x" * 65536)
    except OSError as exc:
        out["fill bytes"] = [errno.errorcode[exc.errno or 0], written]
    os.unlink(f"{_TMP}/fill")
    created = 0
    try:
        while True:
            os.close(os.open(f"{_TMP}/inode{created}", os.O_CREAT | os.O_WRONLY, 0o600))
            created += 1
    except OSError as exc:
        out["fill inodes"] = [errno.errorcode[exc.errno or 0], created]
    for index in range(created):
        os.unlink(f"{_TMP}/inode{index}")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out["RLIMIT_FSIZE"] = [soft, hard]
    fd = os.open(f"{_TMP}/sparse", os.O_CREAT | os.O_WRONLY, 0o600)
    out["control: write just below RLIMIT_FSIZE"] = _outcome(partial(os.pwrite, fd, b"x", soft - 1))
    out["write at RLIMIT_FSIZE"] = _outcome(partial(os.pwrite, fd, b"x", soft))
    out["ftruncate past RLIMIT_FSIZE"] = _outcome(partial(os.ftruncate, fd, soft + 1))
    os.close(fd)
    memfd = os.memfd_create("balloon")
    out["memfd write at RLIMIT_FSIZE"] = _outcome(partial(os.pwrite, memfd, b"x", soft))
    out["memfd ftruncate past RLIMIT_FSIZE"] = _outcome(partial(os.ftruncate, memfd, soft + 1))
    os.close(memfd)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard + 1))
    except ValueError as exc:
        out["raise RLIMIT_FSIZE"] = str(exc)
    else:
        out["raise RLIMIT_FSIZE"] = "ok"
    out["control: /tmp usable again"] = _outcome(partial(_write, f"{_TMP}/after"))
    return out


def _probe32(request: list[int]) -> int:
    return syscall32(*request)


def _probe_x32(request: list[int]) -> list[int]:
    return list(raw_syscall(*request))


def _serve(feature: Any, name: str, attack: Callable[[Any], Any]) -> None:
    """Register ``attack`` (a plain function) as the async service ``name`` of ``feature``."""

    async def service(ctx: Context, request: Any) -> Any:
        return attack(request)

    feature.service(name)(service)


# --- the tests -------------------------------------------------------------------------------

#: the source tree capsule is installed from (editable): never part of a view.
_REPO: Final = Path(capsule.__file__).resolve().parents[1]


def _missing(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def _proc_status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text(encoding="ascii")


def _run_on_host(program: Path) -> int:
    return subprocess.run([program], check=False, timeout=10).returncode


def _host_files(tmp_path: Path, app: TestApp) -> list[str]:
    """Files that exist on the host (checked when the app is written), none of them granted."""
    private = tmp_path / "private.txt"
    private.write_text("host only", encoding="utf-8")
    home = Path.home()
    paths = [
        str(private),
        str(_REPO / "pyproject.toml"),
        str(Path(__file__).resolve()),
        str(app.root / "app.toml"),
        str(app.root / "features" / "probe" / "capsule.toml"),
        str(app.root / "volumes" / "words" / "words.txt"),
    ]
    optional = ["/etc/hostname", "/etc/passwd", "/etc/shadow", "/etc/hosts", "/etc/resolv.conf"]
    optional += [str(home / name) for name in (".bashrc", ".profile", ".ssh", ".config")]
    return paths + [path for path in optional if os.path.exists(path)]


@pytest.mark.trio
async def test_host_files_outside_the_view_do_not_exist(
    capsule_app: TestApp, tmp_path: Path
) -> None:
    """THREATS 1: host files (/etc, home, the source tree, the test's own files) are not there."""
    capsule_app.volume("words", {"words.txt": "alpha"})
    probe = capsule_app.feature("probe", policy=_WORDS)
    _serve(probe, "attack", _attack_host_files)
    host_paths = _host_files(tmp_path, capsule_app)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            assert _missing(host_paths) == []
            host_paths += ["/proc/self/root/etc/passwd", "/proc/1/root/etc/passwd"]
            status = sandbox_status(sup, "probe")
            outer = sup.feature("probe").instance
            assert outer is not None
            host_uid = container_host_uid(status)
            outer_uid = _proc_status(outer.pid)
            got = await sup.call("probe", "attack", {"host_paths": host_paths})

    assert {
        k: v for k, v in got.items() if k.startswith("read /") and k != "read /data/words.txt"
    } == {f"read {path}": "ENOENT" for path in host_paths}
    assert got["list /"] == "EACCES"  # Landlock grants nothing on the tmpfs root itself
    assert got["read /data/words.txt"] == "alpha"  # the granted volume is there
    assert got["uid"] == 0
    assert got["uid_map"] == ["0", str(host_uid), "1"]
    assert got["gid_map"] == ["0", str(host_uid), "1"]
    assert host_uid >= UID_FLOOR
    assert f"Uid:\t{host_uid}\t{host_uid}\t{host_uid}\t{host_uid}" in outer_uid
    assert leftovers() == []


@pytest.mark.trio
async def test_writes_outside_tmp_are_refused(capsule_app: TestApp) -> None:
    """THREATS 2 and 6: the bundle, volumes, runtime, / and /dev are read-only; /tmp is not."""
    capsule_app.volume("words", {"words.txt": "alpha"})
    probe = capsule_app.feature("probe", policy=_WORDS)
    _serve(probe, "attack", _attack_writes)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    assert got.pop("control: write /tmp/ok") == "ok"
    assert len(got) == 20
    assert {k: v for k, v in got.items() if v not in _WRITE_REFUSED} == {}
    assert (capsule_app.root / "volumes" / "words" / "words.txt").read_text() == "alpha"
    assert not (capsule_app.root / "features" / "probe" / "evil.py").exists()
    assert leftovers() == []


@pytest.mark.trio
async def test_files_written_to_tmp_cannot_be_executed(
    capsule_app: TestApp, tmp_path: Path
) -> None:
    """THREATS 2: /tmp is noexec (and has no Landlock EXECUTE): no exec, no PROT_EXEC mapping."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_exec)
    payload = tmp_path / "payload"
    payload.write_bytes(tiny_elf(42))
    payload.chmod(0o755)
    assert _run_on_host(payload) == 42, "the payload must run outside a container"

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    assert got == {
        "chmod 0755 /tmp/tool": "ok",
        "exec /tmp/tool": "EACCES",
        "exec /tmp/tool through /proc/self/fd": "EACCES",
        "fexecve /tmp/tool": "EACCES",
        "mmap /tmp/tool PROT_EXEC": "EPERM",
        "exec a copy of the interpreter in /tmp": "EACCES",
    }
    assert leftovers() == []


@pytest.mark.trio
async def test_code_written_to_a_memfd_cannot_be_executed(capsule_app: TestApp) -> None:
    """THREATS 2: a binary written into a memfd must not run either."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_memfd_exec)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    assert leftovers() == []
    assert got in {"EACCES", "EPERM"}


def _planted_links(app: TestApp, host_file: Path) -> list[str]:
    """Symlinks to host files that the app's volume and the bundle carry on the host side."""
    volume = app.volume("words", {"words.txt": "alpha"})
    bundle = app.root / "features" / "probe"
    bundle.mkdir(parents=True)
    planted = []
    for directory, inside in ((volume, "/data"), (bundle, "/bundle")):
        for name, target in (
            ("abs-link", "/etc/hostname"),
            ("rel-link", "../../../../../../../../../etc/passwd"),
            ("host-link", str(host_file)),
        ):
            (directory / name).symlink_to(target)
            planted.append(f"{inside}/{name}")
        (directory / "etc-link").symlink_to("/etc")
        planted.append(f"{inside}/etc-link/hostname")
    (volume / "inner-link").symlink_to("words.txt")
    return planted


@pytest.mark.trio
async def test_links_and_dotdot_stay_inside_the_view(capsule_app: TestApp, tmp_path: Path) -> None:
    """THREATS 3: symlink, .., hardlink and rename tricks in /tmp and planted in the view."""
    host_file = tmp_path / "private.txt"
    host_file.write_text("host only", encoding="utf-8")
    planted = _planted_links(capsule_app, host_file)
    probe = capsule_app.feature("probe", policy=_WORDS)
    _serve(probe, "attack", _attack_links)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call(
                "probe", "attack", {"planted_links": planted, "host_file": str(host_file)}
            )

    assert got.pop("control: read /data/inner-link") == "alpha"
    assert got.pop("control: rename inside /tmp") == "ok"
    assert {k: got.pop(k) for k in [f"read {p}" for p in planted]} == {
        f"read {p}": "ENOENT" for p in planted
    }
    assert got == {
        "read /tmp/to-shadow": "ENOENT",
        "read /tmp/to-hostname": "ENOENT",
        "read /tmp/to-proc-root": "ENOENT",
        "read /tmp/to-host-file": "ENOENT",
        "write /tmp/to-bundle/evil": "EROFS",
        "write /tmp/to-data/words.txt": "EROFS",
        "read /tmp/../../../etc/hostname": "ENOENT",
        "read /bundle/../../../../etc/passwd": "ENOENT",
        "read /data/../../../../etc/passwd": "ENOENT",
        "read /proc/self/root/etc/hostname": "ENOENT",
        "read /proc/1/root/../../etc/shadow": "ENOENT",
        "read /proc/self/cwd/../etc/passwd": "ENOENT",
        "hardlink os.py into /tmp": "EXDEV",
        "hardlink /bundle file into /tmp": "EXDEV",
        "hardlink /data file into /tmp": "EXDEV",
        "hardlink /tmp file into /bundle": "EROFS",
        "rename /tmp file into /bundle": "EXDEV",
        "rename /bundle file into /tmp": "EXDEV",
        "rename inside /data": "EROFS",
    }
    assert host_file.read_text(encoding="utf-8") == "host only"
    assert leftovers() == []


@pytest.mark.trio
async def test_no_device_nodes_setuid_or_new_privileges(capsule_app: TestApp) -> None:
    """THREATS 4: minimal /dev, no mknod, nosuid and nodev mounts, no_new_privs, no caps."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_devices)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    absent = {k: v for k, v in got.items() if k.startswith("/dev/")}
    assert absent == dict.fromkeys(absent, "ENOENT")
    assert len(absent) > 20
    assert got["devices"] == {
        name: [True, major, minor] for name, (major, minor) in _DEVICES.items()
    }
    # Landlock grants /tmp no MAKE_CHAR, MAKE_BLOCK or MAKE_FIFO: refused before CAP_MKNOD is
    # even looked at (and /tmp is nodev besides).
    assert got["mknod char /tmp/mem"] == "EACCES"
    assert got["mknod block /tmp/disk"] == "EACCES"
    assert got["mknod fifo /tmp/fifo"] == "EACCES"
    assert got["control: mknod regular /tmp/plain"] == "ok"
    assert got["chmod 4755 /tmp/suid"] == "ok"
    assert got["suid bit kept"] is True  # the bit is stored, but /tmp is nosuid:
    mounts = got["mounts"]
    assert [m["point"] for m in mounts if "nosuid" not in m["options"].split(",")] == []
    # Only the four device binds may honour device nodes; the /dev tmpfs holding them is
    # checked on its own (test_the_dev_tmpfs_is_nodev).
    allowed = {f"/dev/{name}" for name in _DEVICES} | {"/dev"}
    assert [
        m["point"]
        for m in mounts
        if "nodev" not in m["options"].split(",") and m["point"] not in allowed
    ] == []
    assert "ro" in next(m for m in mounts if m["point"] == "/dev")["options"].split(",")
    assert got["status"] == {
        "NoNewPrivs": "1",
        "CapInh": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapBnd": "0000000000000000",
        "CapAmb": "0000000000000000",
    }
    assert got["clear no_new_privs"] == "EINVAL"
    assert leftovers() == []


def _attack_dev_mount(_: object) -> list[str]:
    return next(m for m in _mountinfo() if m["point"] == "/dev")["options"].split(",")


@pytest.mark.trio
async def test_the_dev_tmpfs_is_nodev(capsule_app: TestApp) -> None:
    """THREATS 4: the tmpfs at /dev honours no device node of its own (nodev)."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_dev_mount)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            options = await sup.call("probe", "attack")

    assert leftovers() == []
    assert {"ro", "nosuid", "noexec"} <= set(options)
    assert "nodev" in options


@pytest.mark.trio
async def test_mounting_and_changing_root_are_refused(capsule_app: TestApp) -> None:
    """THREATS 5: tmpfs, proc, overlay, FUSE, cgroup (release_agent), new mount API, chroot."""
    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_mounts)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")

    assert got.pop("/sys/fs/cgroup") == "ENOENT"
    assert got == dict.fromkeys(got, "EPERM")
    assert len(got) == 18
    assert leftovers() == []


@needs_x86_64
@pytest.mark.trio
async def test_mount_syscalls_through_other_abis_kill_the_container(
    capsule_app: TestApp,
) -> None:
    """THREATS 5: the 32-bit (int 0x80) and x32 twins of the mount attacks die by SIGSYS."""
    probe = capsule_app.feature("probe", restart=RESTART_AT_ONCE)
    _serve(probe, "int80", _probe32)
    _serve(probe, "x32", _probe_x32)
    x32 = 0x4000_0000
    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await crash_signals(
                sup,
                "probe",
                "int80",
                {
                    "mount": [21, 0, 0, 0, 0, 0],
                    "umount": [22, 0],
                    "umount2": [52, 0, 0],
                    "chroot": [61, 0],
                    "pivot_root": [217, 0, 0],
                    "mknod": [14, 0, 0o020600, 0x0101],
                    "open_tree": [428, 0, 0, 0],
                    "move_mount": [429, 0, 0, 0, 0, 0],
                    "fsopen": [430, 0, 0],
                    "mount_setattr": [442, 0, 0, 0, 0, 0],
                },
            )
            got |= await crash_signals(
                sup,
                "probe",
                "x32",
                {"x32 mount": [x32 | 165, 0, 0, 0, 0, 0], "x32 open_tree": [x32 | 428, 0, 0, 0]},
            )
            alive = await sup.call("probe", "x32", [39])  # getpid, native ABI: still fine

    assert got == dict.fromkeys(got, "SIGSYS")
    assert len(got) == 12
    assert alive == [1, 0]
    assert leftovers() == []


def _forbidden_binds(home: Path, repo: Path, tmp_path: Path) -> set[str]:
    broad = {"/", "/etc", "/home", "/root", "/tmp", "/run", "/var", "/var/run", "/usr", "/dev"}  # noqa: S108
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        broad.add(runtime_dir)
    return broad | {str(home), str(repo), str(tmp_path)}


def _covers(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@pytest.mark.trio
async def test_proc_is_private_and_sys_is_absent(capsule_app: TestApp) -> None:
    """THREATS 7: no /sys; /proc shows only the container's own PID namespace."""
    probe = capsule_app.feature("probe")
    sibling = capsule_app.feature("sibling")
    _serve(probe, "attack", _attack_proc)
    _serve(sibling, "attack", _attack_proc)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            sibling_instance = sup.feature("sibling").instance
            assert sibling_instance is not None
            host_pids = {
                "supervisor": os.getpid(),
                "zygote": zygote_pid(),
                "sibling outer": sibling_instance.pid,
                "sibling inner": descendants(sibling_instance.pid)[0],
            }
            got = await sup.call("probe", "attack", {"host_pids": host_pids})

    assert got["pids"] == [1]
    assert got["/proc/self"] == "1"
    assert got["pid 1"] == {"NSpid": ["1"], "PPid": ["0"]}
    for name in host_pids:
        assert got[f"/proc/{name}"] == "ENOENT", name
    assert got["/sys"] == "ENOENT"
    assert got["/sys/kernel"] == "ENOENT"
    assert got["hostname"] == "probe"
    assert socket.gethostname() != "probe"
    assert got["write /proc/sys/kernel/core_pattern"] == "EACCES"
    assert got["write /proc/sys/kernel/hostname"] == "EACCES"
    assert got["write /proc/sysrq-trigger"] in {"EACCES", "ENOENT"}  # ENOENT: kernel without it
    points = {m["point"]: m for m in got["mounts"]}
    assert points["/proc"]["fstype"] == "proc"
    assert points[_TMP]["fstype"] == "tmpfs"
    assert points["/"]["fstype"] == "tmpfs"
    fixed = {"/", "/bundle", "/dev", _TMP, "/proc"} | {f"/dev/{name}" for name in _DEVICES}
    assert fixed <= set(points)
    for point, mount in points.items():
        if point not in fixed:  # the runtime: read-only, hidden or at its own path
            hidden = mount["fstype"] == "overlay" and mount["root"] == "/"
            assert hidden or mount["root"] == point, mount
            assert "ro" in mount["options"].split(","), mount
    assert points["/bundle"]["fstype"] == "overlay", points["/bundle"]  # names no host path
    assert points["/bundle"]["root"] == "/", points["/bundle"]
    assert leftovers() == []


@pytest.mark.trio
async def test_host_unix_sockets_are_not_in_the_view(capsule_app: TestApp, tmp_path: Path) -> None:
    """THREATS 8: no /tmp, /run or $XDG_RUNTIME_DIR bind, so no host socket is reachable."""
    from capsule._spawn._client import runtime_layout  # noqa: PLC0415 - host side only
    from capsule._supervisor._rundir import runtime_base  # noqa: PLC0415 - host side only

    probe = capsule_app.feature("probe")
    _serve(probe, "attack", _attack_unix_paths)
    agent = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(agent))
    listener.listen()
    listener.setblocking(False)
    sockets = [
        str(agent),
        str(runtime_base()),
        "/run/dbus/system_bus_socket",
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/systemd/private",
        "/run/user/0/bus",
        "/tmp/.X11-unix/X0",  # noqa: S108 - the host's X socket path, probed from inside
    ]
    try:
        with trio.fail_after(30):
            async with capsule_app.open() as sup:
                assert runtime_base().is_dir()  # the supervisor's own run directory is live
                got = await sup.call("probe", "attack", {"sockets": sockets})
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever reached the host's listener
    finally:
        listener.close()

    assert {k: v for k, v in got.items() if k.startswith("connect ")} == {
        f"connect {path}": "ENOENT" for path in sockets
    }
    # Landlock grants /tmp no MAKE_SOCK: no rendezvous socket there either.
    assert got["bind /tmp/rendezvous.sock"] == "EACCES"
    forbidden = _forbidden_binds(Path.home(), _REPO, tmp_path)
    for mount in got["mounts"]:
        if mount["fstype"] in {"proc", "tmpfs", "overlay"}:  # an overlay: judged below
            continue
        assert mount["point"] not in forbidden, mount
        for path in forbidden - {"/"}:
            assert not _covers(mount["root"], path), (mount, path)
    # a hidden mount names no source inside; its sources, on the host, are the runtime's
    for bind in runtime_layout().binds:
        for path in forbidden - {"/"}:
            assert not _covers(bind.source, path), (bind, path)
    tmp_mount = next(m for m in got["mounts"] if m["point"] == _TMP)
    assert (tmp_mount["fstype"], tmp_mount["root"]) == ("tmpfs", "/")
    assert leftovers() == []


@pytest.mark.trio
async def test_disk_and_inodes_run_out_at_the_limits(capsule_app: TestApp) -> None:
    """THREATS 9: /tmp fills at its size and inode limits; RLIMIT_FSIZE caps every file."""
    probe = capsule_app.feature("probe", limits={"tmp": "1MiB"})
    other = capsule_app.feature("other")
    _serve(probe, "attack", _attack_fill)

    async def ping(ctx: Context, request: Any) -> str:
        return "pong"

    other.service("ping")(ping)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            got = await sup.call("probe", "attack")
            assert await sup.call("other", "ping") == "pong"

    status, written = got.pop("fill bytes")
    assert status == "ENOSPC"
    assert 0 < written <= 1 << 20
    status, created = got.pop("fill inodes")
    assert status == "ENOSPC"
    assert 0 < created <= 1024  # nr_inodes = max(1024, size / 16KiB)
    soft, hard = got.pop("RLIMIT_FSIZE")
    assert soft == hard
    assert soft < 1 << 40
    assert got == {
        "control: write just below RLIMIT_FSIZE": "ok",
        "write at RLIMIT_FSIZE": "EFBIG",
        "ftruncate past RLIMIT_FSIZE": "EFBIG",
        "memfd write at RLIMIT_FSIZE": "EFBIG",
        "memfd ftruncate past RLIMIT_FSIZE": "EFBIG",
        "raise RLIMIT_FSIZE": "not allowed to raise maximum limit",  # EPERM
        "control: /tmp usable again": "ok",
    }
    assert leftovers() == []
