"""Every benchmark script runs to the end in its quick mode and writes its JSON.

Each ``benchmarks/*.py`` (helpers such as ``_common.py`` excepted) is found here, so a new
benchmark is run without anyone listing it. The figures are never asserted: benchmarks
report, they do not gate (benchmarks/README.md). What is asserted is that the script
exits 0, writes a JSON document of the shape ``_common.report_payload`` gives, and leaves
nothing behind (temporary directories, mounts, run directories, cgroups, containers).
Rows comparing with bubblewrap or bindfs are skipped by the scripts when those tools are
missing, so this passes with or without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fusefs
from capsule._sandbox._cgroup_detect import detect
from capsule._supervisor._rundir import runtime_base
from capsule._supervisor._supervisor import container_uids

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
#: a quick run takes seconds; this only stops a hung one from holding up the suite
TIMEOUT_S = 180


def _left_behind(pid: int, scratch: Path) -> list[str]:
    """What the benchmark process ``pid`` (now ended) left: the files of its temporary
    directories, mounts, its supervisors' run directories and cgroups, container processes."""
    found = [f"file {p}" for p in scratch.rglob("*")]
    found += [f"mount {point}" for point, _ in fusefs.fuse_mounts_beneath(str(scratch))]
    base = runtime_base()
    runs = sorted(base.glob(f"{pid}-*")) if base.is_dir() else []
    found += [f"run directory {run}" for run in runs]
    for run in runs:
        found += [f"view mount {point}" for point, _ in fusefs.fuse_mounts_beneath(str(run))]
    for root in set(detect().roots.values()):
        found += [f"cgroup {group}" for group in sorted((Path(root) / "capsule").glob(f"{pid}-*"))]
    if os.geteuid() == 0:
        uids = container_uids(pid)
        for entry in Path("/proc").iterdir():
            try:
                status = (entry / "status").read_text(encoding="ascii")
            except (OSError, ValueError):
                continue  # not a process, or one that just ended
            uid = next(int(line.split()[1]) for line in status.splitlines() if line[:4] == "Uid:")
            if uid in uids:
                found.append(f"container process {entry.name} (uid {uid})")
    return found


def _check_shape(payload: dict[str, Any], name: str) -> None:
    assert payload["benchmark"] == name
    assert payload["settings"]["quick"] is True
    assert isinstance(payload["measured_at"], str)
    assert isinstance(payload["machine"], dict)
    assert isinstance(payload["elapsed_s"], int | float)
    assert isinstance(payload["floor"], dict)
    assert isinstance(payload["floor"]["name"], str)
    results = payload["results"]
    assert isinstance(results, list)
    assert results, "no result rows"
    for row in results:
        assert isinstance(row["name"], str)
        assert isinstance(row["p50_us"], int | float)
        assert isinstance(row["p99_us"], int | float)


def test_the_benchmarks_are_found() -> None:
    names = {p.stem for p in SCRIPTS}
    expected = {
        "broker",
        "cli",
        "fusefs",
        "ondemand",
        "peers",
        "spawn",
        "tokens",
        "update",
        "views",
    }
    assert expected <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_each_benchmark_runs_quick_and_writes_its_json(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / f"{script.stem}.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    process = subprocess.Popen(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, f"{script.name} --quick exited {process.returncode}:\n{output}"
    assert out.is_file(), f"{script.name} wrote no {out}:\n{output}"
    payload = json.loads(out.read_text("utf-8"))
    _check_shape(payload, script.stem)
    if script.stem == "peers":  # a quick run never starts Ray, installed or not, and says so
        assert "ray" in payload["skipped"], payload.get("skipped")
        assert {row["system"] for row in payload["results"]} == {"capsule", "multiprocessing"}
    assert _left_behind(process.pid, scratch) == []
