"""Grants follow directories, not path strings: rearranging a writable volume from inside a real
container never leads a later mount out of its grant, judged on the host.

Feature ``s`` is granted volume ``work2`` read-write at ``/vol`` and its subdirectory
``work2/sub/inner`` at ``/sub``; feature ``p`` is granted ``work2/pub`` read-only at ``/pub``.
From ``/vol``, ``s`` renames the directories behind those grants away and puts a symbolic link
to a host directory outside every volume (the canary), or another directory, in their place;
then a grant is mounted again (``s`` crashes and is restarted, ``p`` is restarted, or a
restart races a feature that keeps swapping). The host watches the canary with inotify: not
one open, read or write may happen there, and the mount refuses with an error that names the
feature, the grant and what changed, while the rest of the app goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from capsule import FeatureStartError, FeatureState, Supervisor
from capsule.feature import Context
from capsule.testing import TestApp, crash, leftovers
from tests.security._host import Watch

_SECRET: Final = "host secret"  # noqa: S105 - a planted file's text, not a password
_S_POLICY: Final = {
    "fs": [
        {"path": "/vol", "volume": "work2", "mode": "rw"},
        {"path": "/sub", "volume": "work2/sub/inner", "mode": "rw"},
    ]
}
_P_POLICY: Final = {"fs": [{"path": "/pub", "volume": "work2/pub", "mode": "ro"}]}
_FLIPPER_POLICY: Final = {"fs": [{"path": "/w", "volume": "work2", "mode": "rw"}]}
#: a crash brings ``s`` back at once, and two refused starts quarantine it
_RESTART: Final = {
    "policy": "on-failure",
    "max_restarts": 2,
    "window": "60s",
    "backoff": "10ms..10ms",
}

# --- run inside the container (shipped by value with the handlers) ----------------------------


def _step(step: list[str]) -> str:
    """One rearrangement of the volume: ``ok`` or the errno name."""
    import errno  # noqa: PLC0415 - shipped by value: imports travel inside

    action, *args = step
    try:
        if action == "rename":
            os.rename(args[0], args[1])
        elif action == "mkdir":
            os.makedirs(args[0])
        elif action == "symlink":
            os.symlink(args[0], args[1])
        elif action == "write":
            with open(args[0], "w", encoding="utf-8") as f:
                f.write(args[1])
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _look(directory: str) -> dict[str, str]:
    """What a mount shows: its names, its files' text, and whether a file can be planted."""
    found: dict[str, str] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        return {"list": f"{type(exc).__name__} {exc.errno}"}
    found["list"] = " ".join(names)
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                found[name] = f.read()
        except OSError as exc:
            found[name] = f"{type(exc).__name__} {exc.errno}"
    found["plant"] = _step(["write", os.path.join(directory, "planted.txt"), "from inside"])
    return found


def _flip(request: dict[str, Any]) -> int:
    """Swap ``sub`` with a link to the canary and back, for ``seconds``; returns the swaps."""
    import time  # noqa: PLC0415 - shipped by value: imports travel inside

    root, link = request["root"], request["link"]
    deadline = time.monotonic() + request["seconds"]
    swaps = 0
    while time.monotonic() < deadline:
        os.rename(f"{root}/sub", f"{root}/sub.real")
        os.rename(link, f"{root}/sub")
        os.rename(f"{root}/sub", link)
        os.rename(f"{root}/sub.real", f"{root}/sub")
        swaps += 1
    return swaps


def _serve(feature: Any, name: str, function: Callable[[Any], Any]) -> None:
    async def service(ctx: Context, request: Any) -> Any:
        return function(request)

    feature.service(name)(service)


# --- the host's side ---------------------------------------------------------------------------


def _link_at_depth(target: str) -> list[list[str]]:
    """Steps that make a link to ``target`` at ``/vol/deep/...`` (one level per ``..`` in
    it, so the view lets it be made: it does not climb above the mount where it is made)."""
    depth = target.split("/").count("..")
    where = "/vol/" + "/".join(f"d{i}" for i in range(depth))
    return [["mkdir", where], ["symlink", target, f"{where}/link"]]


def _app(app: TestApp, tmp_path: Path) -> tuple[Path, Path]:
    """The app (``s``, ``p``, a flipper), its volume, and the canary outside every volume."""
    volume = app.volume(
        "work2",
        {"sub/inner/marker.txt": "inner", "pub/marker.txt": "pub", "other/inner/marker.txt": "x"},
    )
    canary = tmp_path / "canary"
    for inside in ("inner", "pub"):
        (canary / inside).mkdir(parents=True)
        (canary / inside / "secret.txt").write_text(_SECRET, encoding="utf-8")
    (canary / "secret.txt").write_text(_SECRET, encoding="utf-8")
    s = app.feature("s", policy=_S_POLICY, restart=_RESTART)
    _serve(s, "rearrange", lambda steps: [_step(step) for step in steps])
    _serve(s, "look", lambda _: _look("/sub"))
    p = app.feature("p", policy=_P_POLICY)
    _serve(p, "look", lambda _: _look("/pub"))
    flipper = app.feature("flipper", policy=_FLIPPER_POLICY)
    _serve(flipper, "flip", _flip)
    _serve(flipper, "rearrange", lambda steps: [_step(step) for step in steps])
    return volume, canary


def _watch(canary: Path) -> Watch:
    return Watch([canary, canary / "inner", canary / "pub"])


def _untouched(canary: Path, events: list[str]) -> None:
    """Zero bytes read or written outside the grants: no access seen, nothing new there."""
    assert events == []
    assert sorted(p.relative_to(canary).as_posix() for p in canary.rglob("*")) == [
        "inner",
        "inner/secret.txt",
        "pub",
        "pub/secret.txt",
        "secret.txt",
    ]


async def _settled(sup: Supervisor, feature: str) -> FeatureState:
    """Wait until a restarted feature runs again or is quarantined by refused starts."""
    handle = sup.feature(feature)
    with trio.fail_after(30):
        while handle.state not in (FeatureState.RUNNING, FeatureState.QUARANTINED):
            await handle._change().wait()
    return handle.state


#: rearrangements of every path component behind ``s``'s grant of ``work2/sub/inner``, and
#: the words the refusal uses for what changed
_SWAPS: Final = {
    "sub replaced by a link to a host directory": (
        [
            ["rename", "/vol/sub", "/vol/sub-away"],
            "LINK ../../../canary",
            ["rename", "LINK", "/vol/sub"],
        ],
        "symbolic link",
    ),
    "inner replaced by a link to a host directory": (
        [
            ["rename", "/vol/sub/inner", "/vol/inner-away"],
            "LINK ../../../../canary/inner",
            ["rename", "LINK", "/vol/sub/inner"],
        ],
        "symbolic link",
    ),
    "inner moved away and a new inner made": (
        [
            ["rename", "/vol/sub/inner", "/vol/inner-away"],
            ["mkdir", "/vol/sub/inner"],
            ["write", "/vol/sub/inner/marker.txt", "impostor"],
        ],
        "another directory",
    ),
    "sub replaced by another directory of the volume": (
        [["rename", "/vol/sub", "/vol/sub-away"], ["rename", "/vol/other", "/vol/sub"]],
        "another directory",
    ),
    "inner moved away": ([["rename", "/vol/sub/inner", "/vol/inner-away"]], "moved or removed"),
}


def _steps(plan: list[Any]) -> list[list[str]]:
    steps: list[list[str]] = []
    link = ""
    for step in plan:
        if isinstance(step, str):  # "LINK target": make the link deep enough, remember where
            made = _link_at_depth(step.split()[1])
            link = made[-1][-1]
            steps += made
        else:
            steps.append([link if part == "LINK" else part for part in step])
    return steps


@pytest.mark.trio
@pytest.mark.parametrize("swap", list(_SWAPS))
async def test_a_grant_whose_directory_was_swapped_refuses_to_mount_after_a_crash(
    capsule_app: TestApp, tmp_path: Path, swap: str
) -> None:
    """Issue 20.1: ``s`` rearranges what lies behind its own subdirectory grant and crashes;
    the restart refuses that grant instead of following the path, the canary is untouched,
    and ``p`` goes on."""
    _, canary = _app(capsule_app, tmp_path)
    plan, changed = _SWAPS[swap]
    with _watch(canary) as watch:
        with trio.fail_after(60):
            async with capsule_app.open() as sup:
                assert (await sup.call("s", "look"))["marker.txt"] == "inner"
                done = await sup.call("s", "rearrange", _steps(plan))
                assert set(done) == {"ok"}, done
                await crash(sup, "s")
                state = await _settled(sup, "s")
                looked = await sup.call("s", "look") if state is FeatureState.RUNNING else None
                error = str(sup.feature("s").last_error)
                pub = await sup.call("p", "look")
        events = watch.events()
    assert looked is None, f"the restarted feature was served {looked}"
    assert state is FeatureState.QUARANTINED
    assert "feature 's': refused to mount the rw grant of /sub (volume work2/sub/inner" in error
    assert changed in error
    assert pub["marker.txt"] == "pub"  # the rest of the app goes on
    _untouched(canary, events)
    assert leftovers() == []


@pytest.mark.trio
async def test_another_features_grant_swapped_for_a_link_refuses_at_its_next_start(
    capsule_app: TestApp, tmp_path: Path
) -> None:
    """Issue 20.1: ``s`` (the whole volume) replaces ``p``'s granted ``pub`` by a link to the
    canary; ``p``'s next start refuses the grant, naming it; ``s`` goes on."""
    _, canary = _app(capsule_app, tmp_path)
    plan = [["rename", "/vol/pub", "/vol/pub-away"], "LINK ../../../canary/pub"]
    plan += [["rename", "LINK", "/vol/pub"]]
    with _watch(canary) as watch:
        with trio.fail_after(60):
            async with capsule_app.open() as sup:
                assert (await sup.call("p", "look"))["marker.txt"] == "pub"
                done = await sup.call("s", "rearrange", _steps(plan))
                assert set(done) == {"ok"}, done
                with pytest.raises(FeatureStartError) as refused:
                    await sup.restart("p")
                ours = await sup.call("s", "look")
        events = watch.events()
    assert "feature 'p': refused to mount the ro grant of /pub (volume work2/pub" in str(
        refused.value
    )
    assert "symbolic link" in str(refused.value)
    assert ours["marker.txt"] == "inner"
    _untouched(canary, events)
    assert leftovers() == []


@pytest.mark.trio
async def test_restarts_racing_a_feature_that_swaps_the_grant_never_mount_outside_it(
    capsule_app: TestApp, tmp_path: Path
) -> None:
    """Issue 20.1: while ``flipper`` keeps swapping ``sub`` with a link to the canary, ``s`` is
    restarted again and again: each start either serves the granted directory itself or
    refuses, and the canary sees nothing."""
    _, canary = _app(capsule_app, tmp_path)
    made = _link_at_depth("../../../canary")
    link = made[-1][-1].replace("/vol/", "/w/")
    made = [[step[0], *(a.replace("/vol/", "/w/") for a in step[1:])] for step in made]
    served: list[str] = []
    refusals: list[str] = []
    with _watch(canary) as watch:
        with trio.fail_after(120):
            async with capsule_app.open() as sup:
                assert set(await sup.call("flipper", "rearrange", made)) == {"ok"}
                swaps: list[int] = []

                async def flip() -> None:
                    request = {"root": "/w", "link": link, "seconds": 6.0}
                    swaps.append(await sup.call("flipper", "flip", request))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flip)
                    await trio.sleep(0.2)
                    while not swaps:
                        try:
                            await sup.restart("s")
                        except FeatureStartError as exc:
                            refusals.append(str(exc))
                            continue
                        looked = await sup.call("s", "look")
                        served.append(looked.get("marker.txt", repr(looked)))
        events = watch.events()
    assert swaps[0] > 0
    assert served + refusals, "no restart happened while the flipper ran"
    assert set(served) <= {"inner"}, served
    assert all("refused to mount the rw grant of /sub" in r for r in refusals), refusals
    _untouched(canary, events)
    assert leftovers() == []
