"""A shadow variant acts on nothing outside itself, in real containers: its calls,
delegations and connections are refused with ShadowError and its publishes dropped, so a
mirrored call has its effects once (the control's); the blocked actions show in its
statistics and the audit; once it is no shadow (shadow mode left, or promoted) it acts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
from capsule import ShadowError, Supervisor, UpdateError
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, restart, wait_until
from tests.capsule.update_helpers import QUICK, audit_events

_N = 12
_KINDS = ("call", "stream", "publish", "delegate", "connect", "listen")
_LENIENT = {"p99_ratio": 1000}  # routing and refusals are judged here, not latency


@contextmanager
def _listener() -> Iterator[socket.socket]:
    """A TCP socket on the host that a shadow may try to reach (never accepted from)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def _no_connection_reached(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


async def _drain(stream: Any) -> None:
    async with stream as items:
        async for _ in items:
            pass


def _counting(
    feature: Feature, version: str, port: int | None, *, catch: bool = True
) -> dict[str, Any]:
    """``add``: call ``tally.bump`` and publish ``counter.added`` (the version); with a
    ``port`` and ``reach`` in the request it also tries to delegate, connect to ``port``,
    listen and stream. With ``catch``, every ShadowError it meets is kept (``get`` answers
    them); without, the first one ends the call."""
    state: dict[str, Any] = {"refused": []}

    async def attempt(what: str, action: Any) -> None:
        try:
            await action()
        except ShadowError as exc:
            if not catch:
                raise
            state["refused"].append([what, type(exc).__name__, exc.version, str(exc)])

    @feature.service("add")
    async def _add(ctx: Context, request: Any) -> str:
        await attempt("call", lambda: ctx.call("tally", "bump", {}))
        if port is not None and isinstance(request, dict) and request.get("reach"):
            await attempt("delegate", lambda: ctx.delegate("icc:call:tally.bump", to="tally"))
            await attempt("connect", lambda: ctx.connect("127.0.0.1", port, timeout=2))
            await attempt("listen", lambda: ctx.listen("127.0.0.1", 0))
            await attempt("stream", lambda: _drain(ctx.stream("tally", "bump", {})))
        await ctx.publish("counter.added", version)
        return version

    @feature.service("get")
    async def _get(ctx: Context, request: Any) -> dict[str, Any]:
        return {"version": version, "refused": state["refused"]}

    return state


def _app(
    root: Path, port: int, *, variants: dict[str, Any] | None = None, catch: bool = True
) -> tuple[TestApp, Feature]:
    """tally (counts ``bump``) and counter 1.0.0, which bumps it and publishes; and counter
    2.0.0, the same with the shadow's refusals kept."""
    app = TestApp(root)
    tally = app.feature("tally", limits=LIMITS, restart=restart())
    bumps = {"n": 0}

    @tally.service("bump")
    async def _bump(ctx: Context, request: Any) -> int:
        bumps["n"] += 1
        return bumps["n"]

    @tally.service("count")
    async def _count(ctx: Context, request: Any) -> int:
        return bumps["n"]

    policy: dict[str, Any] = {
        "call": ["tally.bump"],
        "publish": ["counter.added"],
        "net": [f"127.0.0.1:{port}"],
        "update": {**QUICK, **_LENIENT},
    }
    if variants is not None:
        policy["variants"] = variants
    counter = app.feature(
        "counter",
        requires=["tally"],
        topics=["counter.added"],
        limits=LIMITS,
        restart=restart(),
        policy=policy,
    )
    _counting(counter, "1.0.0", None)  # the control only calls and publishes
    v2 = app.version("counter", "2.0.0")
    _counting(v2, "2.0.0", port, catch=catch)
    return app, v2


async def _events_until_end(events: Any, sup: Supervisor) -> list[Any]:
    """The events heard so far, up to an ``end`` the host publishes now (after them all)."""
    await sup.publish("counter.added", "end")
    heard = []
    with trio.fail_after(10):
        async for event in events:
            if event.payload == "end":
                return heard
            heard.append(event.payload)
    raise AssertionError("the subscription ended before the end marker")


async def _mirrors_answered(sup: Supervisor, n: int) -> None:
    await wait_until(
        lambda: (s := sup.variants("counter")) is not None and s.variants[1].calls >= n,
        f"the shadow answered {n} mirrored calls",
    )


@pytest.mark.trio
async def test_a_shadow_acts_on_nothing_outside_itself_until_shadow_mode_is_left(
    tmp_path: Path,
) -> None:
    with _listener() as listener:
        app, v2 = _app(tmp_path / "app", listener.getsockname()[1])
        async with app.open() as sup, sup.subscribe("counter.added") as events:
            status = await sup.set_variants(
                "counter", {"1.0.0": 0, str(app.bundle(v2)): 100}, shadow=True
            )
            assert status.variants[1].role == "shadow"
            answers = [await sup.call("counter", "add", {"reach": True}) for _ in range(_N)]
            assert answers == ["1.0.0"] * _N  # served by the control
            await _mirrors_answered(sup, _N)
            assert await sup.call("tally", "count") == _N  # the control's calls alone
            assert await _events_until_end(events, sup) == ["1.0.0"] * _N
            assert _no_connection_reached(listener)
            status = sup.variants("counter")
            assert status is not None
            shadow = status.variants[1]
            assert shadow.errors == 0  # a refusal it handles is no failure of its own
            assert shadow.blocked == dict.fromkeys(_KINDS, _N)
            assert status.variants[0].blocked == {}
            assert f"2.0.0 shadow: blocked {6 * _N} (call {_N}, connect {_N}, " in status.table()

            await sup.set_variants("counter", {"1.0.0": 0, "2.0.0": 100}, shadow=False)
            reply = await sup.call("counter", "get")
            assert reply["version"] == "2.0.0"  # no shadow now: it serves its share
            kinds = sorted(r[0] for r in reply["refused"])  # mirrors may overlap
            assert kinds == sorted(["call", "delegate", "connect", "listen", "stream"] * _N)
            for _, kind, version, text in reply["refused"]:
                assert (kind, version) == ("ShadowError", "2.0.0")
                assert "'counter'" in text
                assert "2.0.0 is a shadow variant" in text
            assert await sup.call("counter", "add", {}) == "2.0.0"
            assert await sup.call("tally", "count") == _N + 1  # its call went through
            assert await _events_until_end(events, sup) == ["2.0.0"]
            status = sup.variants("counter")
            assert status is not None
            assert not status.shadow
            assert status.variants[1].role == "candidate"
            await sup.abort_variants("counter")
    limits = audit_events(app.root / "audit.jsonl", "limit")
    shadow = [line for line in limits if line.get("limit", "").startswith("shadow-")]
    assert {line["limit"] for line in shadow} == {f"shadow-{kind}" for kind in _KINDS}
    for kind in _KINDS:
        lines = [line for line in shadow if line["limit"] == f"shadow-{kind}"]
        assert sum(line["count"] for line in lines) == _N
        assert len(lines) < _N  # summed up per flush, not a line per attempt
        assert all(line["feature"] == "counter" for line in lines)
        assert all("version 2.0.0 is a shadow variant" in line["reason"] for line in lines)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_promoted_shadow_acts_as_the_feature(tmp_path: Path) -> None:
    """Its handler lets the ShadowError of its call end it, so no mirror publishes."""
    with _listener() as listener:
        app, v2 = _app(
            tmp_path / "app", listener.getsockname()[1], variants={"shadow": True}, catch=False
        )
        async with app.open() as sup, sup.subscribe("counter.added") as events:
            await sup.set_variants("counter", {"1.0.0": 0, str(app.bundle(v2)): 100})
            for _ in range(_N):
                await sup.call("counter", "add", {})
            await _mirrors_answered(sup, _N)
            assert await sup.call("tally", "count") == _N
            assert await _events_until_end(events, sup) == ["1.0.0"] * _N
            status = sup.variants("counter")
            assert status is not None
            assert status.shadow
            shadow = status.variants[1]
            assert shadow.blocked == {"call": _N}  # its handler ended there, not publishing
            assert (shadow.errors, shadow.state) == (0, "running")  # not its own failure

            await sup.promote_variant("counter", "2.0.0")
            assert sup.variants("counter") is None
            assert await sup.call("counter", "add", {}) == "2.0.0"
            assert await sup.call("tally", "count") == _N + 1
            assert await _events_until_end(events, sup) == ["2.0.0"]
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_shadow_mode_with_shared_storage_is_refused(tmp_path: Path) -> None:
    with _listener() as listener:
        app, v2 = _app(tmp_path / "app", listener.getsockname()[1], variants={"storage": "shared"})
        async with app.open() as sup:
            with pytest.raises(UpdateError, match=r'storage = "shared".*\[policy\.counter\]'):
                await sup.set_variants(
                    "counter", {"1.0.0": 0, str(app.bundle(v2)): 100}, shadow=True
                )
            assert sup.variants("counter") is None
            assert sup.statistics().containers_started == 2  # tally and counter: no shadow
            status = await sup.set_variants("counter", {"1.0.0": 50, str(app.bundle(v2)): 50})
            assert not status.shadow  # shared storage without shadow mode runs
            await sup.abort_variants("counter")
    assert capsule.testing.leftovers() == []
