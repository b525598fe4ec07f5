"""The host program's environment, looked for from inside real containers and judged on the host.

The program embedding capsule may hold secrets in its environment (``OPENAI_API_KEY``). None of
it may reach a feature: the zygote is executed with an environment built from scratch, and each
container's environment is the runtime's minimal one plus what its app names in ``env`` of its
``[policy.NAME]``. The attacks read ``os.environ``, ``/proc/self/environ``, the environment of a
program the feature executes and of every process it can see; the host then reads
``/proc/PID/environ`` of every process of the container, of its file-system server and of the
zygote.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from capsule._environ import MINIMAL, minimal
from capsule._spawn._client import runtime_layout
from capsule.feature import Context
from capsule.testing import TestApp, leftovers
from tests.security._host import (
    container_host_uid,
    memory_holds,
    processes_of_uid,
    sandbox_status,
    zygote_pid,
)

#: the host variable a feature must never see, and one the app passes on by name.
_HOST_ONLY: Final = "CAPSULE_PROBE_OPENAI_API_KEY"
_FORWARDED: Final = "CAPSULE_PROBE_FORWARDED"

#: programs a service keeps running between calls (one process per container).
_HELD: list[subprocess.Popen[bytes]] = []

# --- run inside the container (shipped by value with the handlers) ----------------------------

_CHILD: Final = """\
import json, os, sys
with open("/proc/self/environ", "rb") as f:
    sys.stdout.write(json.dumps([dict(os.environ), f.read().decode()]) + "\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def _interpreter() -> list[str]:
    """How to execute Python here: through the dynamic loader this process was loaded with
    (the runtime's directories are bound at their host paths, ``/lib64`` may not be)."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        loader = next(line.split()[-1] for line in f if "/ld-linux" in line.split()[-1])
    return [loader, os.path.realpath(sys._base_executable)]  # type: ignore[attr-defined]


def _environ_of(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


async def _look(ctx: Context, request: Any) -> dict[str, Any]:
    """Every environment this container can reach: its own, a child's, each visible process's."""
    child = subprocess.Popen(  # noqa: ASYNC220 - it answers at once, then waits
        [*_interpreter(), "-I", "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    _HELD.append(child)
    assert child.stdout is not None
    child_environ, child_proc = json.loads(child.stdout.readline())
    own = _environ_of("self")  # unreadable: this process is not dumpable (the host reads it)
    pids = sorted(name for name in os.listdir("/proc") if name.isdigit())
    return {
        "os.environ": dict(os.environ),
        "/proc/self/environ": own,
        "child os.environ": child_environ,
        "child /proc/self/environ": child_proc,
        "/proc/PID/environ": {pid: _environ_of(pid) for pid in pids},
    }


# --- host side --------------------------------------------------------------------------------


def _host_environ(pid: int) -> dict[str, str]:
    """``/proc/PID/environ`` as the host's root reads it (any process, dumpable or not)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    return dict(entry.partition("=")[::2] for entry in raw.split("\0") if entry)


@pytest.fixture
def host_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A secret in the host program's environment before the supervisor (and zygote) start."""
    value = secrets.token_hex(16)
    monkeypatch.setenv(_HOST_ONLY, value)
    return value


@pytest.mark.trio
async def test_the_host_environment_is_not_in_the_container(
    capsule_app: TestApp, host_secret: str
) -> None:
    """THREATS: a secret in the host program's environment is nowhere a feature can look, nor
    in any process of its container, its file-system server or the zygote (read on the host)."""
    capsule_app.volume("data", {"a.txt": "a\n"})
    probe = capsule_app.feature(
        "probe", policy={"fs": [{"path": "/data", "volume": "data", "mode": "ro"}]}
    )
    probe.service("look")(_look)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            seen = await sup.call("probe", "look")
            instance = sup.feature("probe").instance
            assert instance is not None
            assert instance.view is not None
            host_uid = container_host_uid(sandbox_status(sup, "probe"))
            container = sorted(processes_of_uid(host_uid))
            judged = {pid: _host_environ(pid) for pid in container}
            judged[instance.view.pid] = _host_environ(instance.view.pid)
            judged[zygote_pid()] = _host_environ(zygote_pid())

    assert os.environ[_HOST_ONLY] == host_secret  # the host program does hold it
    assert seen["os.environ"] == dict(MINIMAL)
    assert seen["child os.environ"] == dict(MINIMAL)
    assert "PATH=" in seen["child /proc/self/environ"]  # readable: the probe can see
    inside = [
        seen["/proc/self/environ"],
        seen["child /proc/self/environ"],
        *seen["/proc/PID/environ"].values(),
    ]
    assert all(_HOST_ONLY not in text and host_secret not in text for text in inside), inside
    assert len(container) >= 3, container  # the outer process, the feature's, the child it ran
    # forked from the zygote: its block (which, in a root of its own, names where its
    # interpreter's library lies there); executed by the feature: its own environment
    forked = minimal(runtime_layout().library_path)
    assert all(environ in (forked, dict(MINIMAL)) for environ in judged.values()), judged
    assert leftovers() == []


@pytest.mark.trio
async def test_only_the_variables_the_app_names_reach_the_feature(
    capsule_app: TestApp, host_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app sets a literal and passes one host variable on under a name of its choosing;
    the feature and what it runs see exactly those beside the minimal environment."""
    forwarded = secrets.token_hex(16)
    monkeypatch.setenv(_FORWARDED, forwarded)
    env = {"GREETING": "hello, world", "API_KEY": {"from_host": _FORWARDED}}
    probe = capsule_app.feature("probe", policy={"env": env})
    probe.service("look")(_look)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            seen = await sup.call("probe", "look")
            host_uid = container_host_uid(sandbox_status(sup, "probe"))
            judged = _host_environ(_child_on_host(host_uid))

    expected = {**MINIMAL, "GREETING": "hello, world", "API_KEY": forwarded}
    assert seen["os.environ"] == expected
    assert seen["child os.environ"] == expected
    assert judged == expected  # what the feature executes gets them in its environment block
    texts = [seen["/proc/self/environ"], *seen["/proc/PID/environ"].values()]
    assert all(host_secret not in text and _FORWARDED not in text for text in texts), texts
    assert leftovers() == []


def _child_on_host(host_uid: int) -> int:
    """The host pid of the program the feature executed (the one running ``_CHILD``)."""
    found = [
        pid
        for pid in processes_of_uid(host_uid)
        if b"/proc/self/environ" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.trio
async def test_the_zygote_never_holds_a_features_environment(capsule_app: TestApp) -> None:
    """THREATS: every container is forked from the zygote and inherits its memory, so a value
    the zygote once held for one feature (an API key its app passes on) would be readable by
    every feature forked after it. The environment travels on the container's own channel
    with its tokens; the zygote's memory, read on the host, never holds it."""
    secret = secrets.token_hex(24)
    holder = capsule_app.feature("holder", policy={"env": {"API_KEY": secret}})
    holder.service("look")(_look)
    later = capsule_app.feature("later")
    later.service("look")(_look)

    with trio.fail_after(30):
        async with capsule_app.open() as sup:
            seen = await sup.call("holder", "look")
            await sup.call("later", "look")
            await sup.restart("holder")  # a second spawn request for the same feature
            in_zygote = memory_holds(zygote_pid(), secret.encode())

    assert seen["os.environ"]["API_KEY"] == secret  # the feature does get it
    assert in_zygote == []
    assert leftovers() == []
