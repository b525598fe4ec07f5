"""``capsule doctor`` run as a user would (in a subprocess), and its report for other machines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

from capsule._cli._doctor_report import as_json, as_text
from capsule._sandbox._cgroup_detect import CgroupSupport
from capsule._sandbox._isolation import Isolation, Mechanism
from capsule._sandbox._seccomp_policy import DENIED_SYSCALLS
from capsule._spawn._layout import neutral_support

ROOT = Path(__file__).resolve().parents[2]
LANDLOCK_FIX = "Linux >= 5.13 with landlock in the lsm= kernel command line"


def capsule(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capsule", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def line_of(out: str, name: str) -> str:
    """The first line of ``name``'s entry in the text report."""
    match = re.search(rf"^{re.escape(name)} +(ok|missing|yes|no) +.*$", out, re.M)
    assert match is not None, f"no line for {name!r} in:\n{out}"
    return match.group(0)


# -- this machine ----------------------------------------------------------------------


def test_doctor_reports_full_isolation_here() -> None:
    result = capsule("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert re.match(r"user namespaces +ok +available$", line_of(out, "user namespaces"))
    assert re.match(r"fuse +ok +/dev/fuse$", line_of(out, "fuse"))
    assert re.match(r"landlock +ok +ABI 7$", line_of(out, "landlock"))
    gives = " ".join(out.split("ABI 7\n", 1)[1].split("\nseccomp", 1)[0].split())
    assert gives.startswith("gives: file system access; rename/link across directories (refer);")
    assert gives.endswith("audit logging flags")
    assert re.match(r"seccomp +ok +filters with errno and kill_process$", line_of(out, "seccomp"))
    assert f"denies {len(DENIED_SYSCALLS)} syscalls (mount, " in out
    assert re.match(r"cgroups +ok +cgroup v1: memory, pids, cpu$", line_of(out, "cgroups"))
    assert re.match(r"rootless +no +running as root", line_of(out, "rootless"))
    assert "missing" not in out
    assert "fix:" not in out
    assert out.endswith(
        "\nisolation: full\n"
        "  every isolation mechanism is available: each container runs with all of them.\n"
    )


def test_doctor_json_matches_the_text() -> None:
    text = capsule("doctor").stdout
    result = capsule("doctor", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    names = [m["name"] for m in data["mechanisms"]]
    assert names == ["user namespaces", "fuse", "landlock", "seccomp", "cgroups"]
    for mechanism in data["mechanisms"]:
        assert mechanism["status"] == "ok"
        assert mechanism["available"] is True
        assert mechanism["fix"] is None
        assert line_of(text, mechanism["name"]).split()[len(mechanism["name"].split())] == "ok"
    assert data["landlock"]["abi"] == 7
    assert len(data["landlock"]["features"]) == 7
    assert data["landlock"]["features"][0] == "file system access"
    assert set(data["seccomp"]["denied_syscalls"]) == DENIED_SYSCALLS
    assert "mount" in data["seccomp"]["denied_syscalls"]
    assert data["cgroups"]["version"] == 1
    assert {"memory", "pids", "cpu"} <= set(data["cgroups"]["controllers"])
    assert data["cgroups"]["description"] == "cgroup v1: memory, pids, cpu"
    assert data["rootless"] is False
    assert data["isolation"]["level"] == "full"
    assert data["isolation"]["missing"] == []
    assert data["isolation"]["allow_missing"] == []
    assert data["isolation"]["meaning"] in text


def test_unknown_format_is_a_usage_error() -> None:
    result = capsule("doctor", "--format", "yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


# -- other machines: reports built from constructed probe results ------------------------------


def isolation(*missing: Mechanism, rootless: bool = False, abi: int = 7) -> Isolation:
    present = {
        "user namespaces": Mechanism("user namespaces", available=True, detail="available"),
        "fuse": Mechanism("fuse", available=True, detail="/dev/fuse"),
        "landlock": Mechanism("landlock", available=True, detail=f"ABI {abi}"),
        "seccomp": Mechanism("seccomp", available=True, detail="filters"),
        "cgroups": Mechanism("cgroups", available=True, detail="cgroup v2: memory, pids, cpu"),
    }
    for mechanism in missing:
        present[mechanism.name] = mechanism
    support = CgroupSupport(
        version=2,
        controllers=frozenset({"memory", "pids", "cpu"}),
        roots=MappingProxyType({}),
        writable=True,
    )
    return Isolation(
        mechanisms=tuple(present.values()), rootless=rootless, landlock_abi=abi, cgroups=support
    )


def test_a_missing_mechanism_shows_its_fix_and_reduced() -> None:
    landlock = Mechanism(
        "landlock", available=False, detail="not supported or disabled", fix=LANDLOCK_FIX
    )
    machine = isolation(landlock, abi=0)
    out = as_text(machine)
    assert re.match(r"landlock +missing +not supported or disabled$", line_of(out, "landlock"))
    assert f"\n{' ' * 26}fix: {LANDLOCK_FIX}\n" in out
    assert "gives:" not in out
    assert re.match(r"seccomp +ok ", line_of(out, "seccomp"))
    assert "\nisolation: reduced\n" in out
    meaning = " ".join(out.split("isolation: reduced\n", 1)[1].split())
    assert meaning.startswith("landlock is missing: an app runs here only if it lists")
    assert 'allow_missing = ["landlock"]' in meaning

    data = as_json(machine)
    assert data["isolation"]["level"] == "reduced"
    assert data["isolation"]["missing"] == ["landlock"]
    assert data["isolation"]["allow_missing"] == ["landlock"]
    entry = next(m for m in data["mechanisms"] if m["name"] == "landlock")
    assert entry == {
        "name": "landlock",
        "status": "missing",
        "available": False,
        "detail": "not supported or disabled",
        "fix": LANDLOCK_FIX,
    }
    assert data["landlock"] == {"abi": 0, "features": []}


def test_two_missing_mechanisms_are_both_named() -> None:
    machine = isolation(
        Mechanism("seccomp", available=False, detail="no filters", fix="CONFIG_SECCOMP_FILTER=y"),
        Mechanism("cgroups", available=False, detail="read-only", fix="mount it rw"),
    )
    out = as_text(machine)
    assert "fix: CONFIG_SECCOMP_FILTER=y" in out
    assert "fix: mount it rw" in out
    meaning = " ".join(out.split("isolation: reduced\n", 1)[1].split())
    assert meaning.startswith("cgroups and seccomp are missing:")
    assert 'allow_missing = ["cgroups", "seccomp"]' in meaning


def test_without_user_namespaces_nothing_starts() -> None:
    machine = isolation(
        Mechanism(
            "user namespaces",
            available=False,
            detail="user.max_user_namespaces is 0",
            fix="sysctl -w user.max_user_namespaces=15000",
        ),
        rootless=True,
    )
    out = as_text(machine)
    assert "fix: sysctl -w user.max_user_namespaces=15000" in out
    assert re.match(r"rootless +yes +running as uid \d+", line_of(out, "rootless"))
    assert "\nisolation: none\n  user namespaces are missing: no container can start" in out
    assert as_json(machine)["isolation"]["level"] == "none"


def test_missing_fuse_is_shown_but_keeps_the_level() -> None:
    machine = isolation(
        Mechanism("fuse", available=False, detail="/dev/fuse is missing", fix="modprobe fuse")
    )
    out = as_text(machine)
    assert re.match(r"fuse +missing +/dev/fuse is missing$", line_of(out, "fuse"))
    assert "fix: modprobe fuse" in out
    assert "\nisolation: full\n" in out
    assert "fuse is missing: it serves the volume views" in out
    assert as_json(machine)["isolation"]["notes"] != []


def test_doctor_says_where_containers_see_the_runtime() -> None:
    """The runtime is shown beneath /usr/lib/capsule when the zygote can have a root of its own
    (root, overlayfs); otherwise at its host paths, and the line says why."""
    neutral, reason = neutral_support()
    line = next(ln for ln in as_text(isolation()).splitlines() if ln.startswith("runtime paths"))
    data = as_json(isolation())["runtime_paths"]
    if neutral:
        assert re.match(r"runtime paths +neutral +beneath /usr/lib/capsule: ", line), line
        assert data["mode"] == "neutral"
    else:
        assert re.match(r"runtime paths +host +at their host paths \(", line), line
        assert reason in line
        assert data["mode"] == "host"
