"""Host facts looked for from inside a container and judged on the host: other features' paths in
its memory, and the host's layout (where Python, the virtualenv, capsule, the app and the
supervisor's run directory lie) in what its process and interpreter say about themselves.

Every container and every file-system server is forked from the zygote and inherits its memory,
freed bytes included. Were the zygote to decode a feature's spawn request (its name, the backing
directories of its view, where its view is mounted, its cgroup), every feature forked after it
would carry those paths in its heap. The attack: feature ``alpha`` is started (twice) with a
volume of its own, then ``bravo`` is started and scans its own memory for alpha's paths from
inside its sandbox; the host then reads bravo's processes and the zygote's memory as root.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import trio

import capsule
import fusefs
from capsule._supervisor._rundir import RunDir
from capsule.feature import Context
from capsule.testing import TestApp, leftovers
from tests.security._host import (
    container_host_uid,
    memory_holds,
    processes_of_uid,
    sandbox_status,
    zygote_pid,
)

#: every byte to the next one: the probe searches its memory, shifted, for shifted needles, so
#: it never holds a needle itself (the memory it scans would otherwise always contain it).
_SHIFT: Final = bytes((value + 1) % 256 for value in range(256))
_PIECE: Final = 1 << 20
_OVERLAP: Final = 512  # longer than any needle: one that straddles two pieces is still found

# --- run inside the container (shipped by value with the handlers) ----------------------------


def _own_memory() -> list[tuple[int, int]]:
    """The readable private anonymous mappings of this process: its heap, stacks and arenas,
    where a decoded request (or what is left of it once freed) would lie. File mappings are the
    runtime's own code, and reading past the end of one would raise SIGBUS."""
    regions = []
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if fields[1].startswith("r") and name in {"", "[heap]", "[stack]"}:
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                regions.append((start, end))
    return regions


def _proc_self_mem() -> str:
    try:
        with open("/proc/self/mem", "rb"):
            return "readable"
    except OSError as exc:
        return exc.strerror or "unreadable"


async def _scan(ctx: Context, shifted: list[bytes]) -> dict[str, Any]:
    """Which of the (shifted) needles this process's own memory holds, read by address: the
    container is not dumpable, so its ``/proc/self/mem`` belongs to the host's root."""
    found: set[int] = set()
    scanned = 0
    for start, end in _own_memory():
        position = start
        while position < end:
            size = min(_PIECE, end - position)
            piece = ctypes.string_at(position, size).translate(_SHIFT)
            found.update(i for i, needle in enumerate(shifted) if needle in piece)
            scanned += size
            if position + size >= end:
                break
            position += size - _OVERLAP
    return {"found": sorted(found), "scanned": scanned, "/proc/self/mem": _proc_self_mem()}


def _text(path: str) -> str:
    """A /proc file, NULs as spaces (or why it cannot be read: environ is not the container's
    to read, it is not dumpable; the host reads it below)."""
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


async def _self_description(ctx: Context, _: object) -> dict[str, str]:
    """Everything this process and its interpreter say about where they run from: its mount
    table, mappings, command line, environment and executable; ``sys``'s paths; every loaded
    module's file, search path and spec; and what ``site`` and ``sysconfig`` answer."""
    import site  # noqa: PLC0415 - imported here, in the container, as a feature would
    import sysconfig  # noqa: PLC0415 - imported here, in the container, as a feature would

    facts = {
        name: _text(f"/proc/self/{name}") for name in ("mountinfo", "maps", "cmdline", "environ")
    }
    facts["exe"] = os.readlink("/proc/self/exe")
    facts["sys"] = repr(
        [
            sys.path,
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sys.base_exec_prefix,
            sys.executable,
            getattr(sys, "_base_executable", ""),
            sys.path_importer_cache.keys(),
        ]
    )
    modules = []
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        modules.append(
            (
                name,
                getattr(module, "__file__", None),
                list(getattr(module, "__path__", []) or []),
                getattr(spec, "origin", None),
                getattr(spec, "cached", None),
                list(getattr(spec, "submodule_search_locations", None) or []),
            )
        )
    facts["modules"] = repr(modules)
    facts["site"] = repr([site.getsitepackages(), site.PREFIXES])
    facts["sysconfig"] = repr([sysconfig.get_paths(), sysconfig.get_config_vars()])
    return facts


# --- host side --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_container_never_holds_another_features_paths(capsule_app: TestApp) -> None:
    """THREATS: the zygote learns nothing per feature: it forks on a request that names no
    feature, and the child reads its own request on a socket of its own. A container started
    after another feature holds none of that feature's paths, in its own memory (read from
    inside) nor in any of its processes' or the zygote's (read on the host)."""
    backing = capsule_app.volume("alphaonly", {"a.txt": "a\n"})
    alpha = capsule_app.feature(
        "alpha", policy={"fs": [{"path": "/data", "volume": "alphaonly", "mode": "rw"}]}
    )
    alpha.service("scan")(_scan)
    bravo = capsule_app.feature("bravo")
    bravo.service("scan")(_scan)

    with trio.fail_after(60):
        async with capsule_app.open() as sup:
            await sup.call("alpha", "scan", [])
            for _ in range(3):
                await sup.restart("alpha")  # more rounds of requests for alpha
            instance = sup.feature("alpha").instance
            assert instance is not None
            assert instance.view is not None
            unmounted = [
                str(backing),  # the backing directory of alpha's volume
                *instance.spec.request.cgroup_procs,  # alpha's cgroup, by name
            ]
            needles = [
                *unmounted,
                str(instance.view.mountpoint),  # where alpha's view is mounted
                "/views/alpha-",  # any generation of it, under the run directory
            ]
            await sup.restart("bravo")  # forked after every request for alpha
            seen = await sup.call("bravo", "scan", [n.encode().translate(_SHIFT) for n in needles])
            host_uid = container_host_uid(sandbox_status(sup, "bravo"))
            bravo_pids = sorted(processes_of_uid(host_uid))
            bravo_view = sup.feature("bravo").instance.view  # type: ignore[union-attr]
            assert bravo_view is not None
            zygote = zygote_pid()
            on_host = {
                pid: [n for n in needles if memory_holds(pid, n.encode())]
                for pid in [*bravo_pids, zygote]
            }
            # nor is the app's directory (where every bundle lies) in the zygote's memory
            app_dir = str(capsule_app.root)
            if memory_holds(zygote, app_dir.encode()):
                on_host[zygote].append(app_dir)
            # bravo's file-system server lives in the host's mount namespace and reads its
            # mount table (to find its FUSE connection), where every view's mount point is
            # listed: only what no mount table names is judged there
            on_host[bravo_view.pid] = [
                n for n in unmounted if memory_holds(bravo_view.pid, n.encode())
            ]

    assert seen["scanned"] > 1 << 20, seen  # the probe did read its heap
    assert seen["/proc/self/mem"] == "Permission denied", seen  # hence the read by address
    assert [needles[i] for i in seen["found"]] == [], seen
    assert len(bravo_pids) >= 2, bravo_pids  # the outer process and the feature's
    assert len(unmounted) >= 2, unmounted  # alpha has a cgroup of its own
    assert on_host == {pid: [] for pid in on_host}, on_host
    assert leftovers() == []


_SOURCE_TREE: Final = "capsule's source tree"


def _host_layout(app_root: str) -> dict[str, str]:
    """The host directories a container must not learn, by what they are (real paths and as
    named). A Python installed at a distribution's own prefix (``/usr``) tells nothing."""
    import site  # noqa: PLC0415 - the host's answer, for its site-packages

    named = {
        "python prefix": sys.base_prefix,
        "python exec prefix": sys.base_exec_prefix,
        "virtualenv": sys.prefix,
        "capsule's package": os.path.dirname(capsule.__file__),
        _SOURCE_TREE: os.path.dirname(os.path.dirname(capsule.__file__)),
        "fusefs's package": os.path.dirname(fusefs.__file__),
        "the app": app_root,
        "the run directory": str(RunDir().path),
        **{f"site-packages {i}": path for i, path in enumerate(site.getsitepackages())},
    }
    common = {"", "/usr", "/usr/local"}
    return {
        f"{what} ({form})": form.rstrip("/")
        for what, path in named.items()
        for form in {path, os.path.realpath(path)}
        if form.rstrip("/") not in common
    }


def _in_memory(paths: dict[str, str]) -> list[tuple[str, str]]:
    """The paths looked for in the container's own memory: not the source tree (the probe's
    code comes from this test's file, there), nor what the interpreter's binary names (the
    dynamic loader keeps a copy of its RUNPATH: a file of the runtime, the threat model
    lists it)."""
    binary = Path(os.path.realpath(sys.executable)).read_bytes()
    return [
        (what, path)
        for what, path in paths.items()
        if not what.startswith(_SOURCE_TREE) and path.encode() not in binary
    ]


@pytest.mark.trio
async def test_a_container_learns_nothing_of_the_hosts_layout(capsule_app: TestApp) -> None:
    """THREATS: a container does not learn where the host keeps Python, the virtualenv,
    capsule, the app or the supervisor's run directory: the zygote runs in a root of its own
    where the runtime lies beneath /usr/lib/capsule, and every directory a container sees is
    a hidden mount (an overlay named by descriptors), its bundle included; sysconfig's
    build data is a copy rewritten for where the prefix is shown; the host paths its root is
    built from are read by its outer process only after the feature's is forked. Its mount
    table, mappings, command line, environment, executable, sys's paths, every module's
    file, what site and sysconfig answer (every variable) and its own memory are read from
    inside and judged on the host."""
    probe = capsule_app.feature("probe")
    probe.service("describe")(_self_description)
    probe.service("scan")(_scan)
    paths = _host_layout(str(capsule_app.root))
    # the path itself or beneath it, not a longer name
    needles = {what: re.compile(re.escape(path) + r"(?![\w.-])") for what, path in paths.items()}
    in_memory = _in_memory(paths)
    with trio.fail_after(60):
        async with capsule_app.open() as sup:
            facts = await sup.call("probe", "describe", None)
            shifted = [path.encode().translate(_SHIFT) for _, path in in_memory]
            seen = await sup.call("probe", "scan", shifted)
            host_uid = container_host_uid(sandbox_status(sup, "probe"))
            pids = sorted(processes_of_uid(host_uid))
            for pid in pids:  # read as the host's root, what the container cannot read itself
                for name in ("environ", "cmdline"):
                    facts[f"{name} of {pid}"] = _text(f"/proc/{pid}/{name}")

    leaks = {
        fact: sorted(what for what, needle in needles.items() if needle.search(text))
        for fact, text in facts.items()
    }
    assert {fact: found for fact, found in leaks.items() if found} == {}, facts
    assert [in_memory[i][0] for i in seen["found"]] == [], seen
    assert any(what.startswith("the app") for what, _ in in_memory), in_memory
    assert seen["scanned"] > 1 << 20, seen  # the probe did read its heap
    assert "/usr/lib/capsule/" in facts["sys"], facts["sys"]  # the runtime's neutral place
    assert " overlay " in facts["mountinfo"], facts["mountinfo"]  # the hidden mounts
    assert len(facts["modules"]) > 10_000, len(facts["modules"])  # the runtime is loaded
    assert len(pids) >= 2, pids  # the outer process and the feature's
    assert all(not facts[f"environ of {pid}"].startswith("unreadable") for pid in pids), facts
    assert leftovers() == []
