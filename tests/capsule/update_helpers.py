"""Shared pieces of the live-update tests: a counter feature in two versions, a client
feature that calls it from its own container, and the audit lines an update wrote.

The counter keeps its count in memory: only ``export_state``/``import_state`` carry it
from one version to the next, so a count that survives an update proves the handoff.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from capsule import Supervisor
from capsule._container._feature import Context, Feature
from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, restart

#: updates that settle fast enough for a test; each test overrides what it needs
QUICK: Mapping[str, Any] = {"probation": "1s", "keep": "2s", "drain": "2s"}


def counter(feature: Feature, version: str, *, handoff: bool = True) -> dict[str, int]:
    """Make ``feature`` a counter: ``add`` counts, ``get`` answers the count and version.
    With ``handoff`` it exports and imports its count (as JSON)."""
    state = {"count": 0}

    @feature.service("add")
    async def _add(ctx: Context, request: Any) -> int:
        state["count"] += 1
        return state["count"]

    @feature.service("get")
    async def _get(ctx: Context, request: Any) -> dict[str, Any]:
        return {"count": state["count"], "version": version}

    if handoff:

        @feature.export_state
        async def _export(ctx: Context) -> bytes:
            return json.dumps(state).encode()

        @feature.import_state
        async def _import(ctx: Context, from_version: str, data: bytes) -> None:
            state.update(json.loads(data))
            state["from"] = from_version  # type: ignore[assignment]

    return state


def counter_version(app: TestApp, version: str) -> Feature:
    """A new version of ``app``'s ``counter`` (a counter as :func:`counter` makes it)."""
    feature = app.version("counter", version)
    counter(feature, version)
    return feature


def counter_app(
    root: Path,
    *,
    update: Mapping[str, Any] | None = None,
    client: bool = False,
    policy: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] = LIMITS,
) -> TestApp:
    """An app with ``counter`` 1.0.0 (update policy ``QUICK`` with ``update`` over it) and,
    with ``client``, a ``client`` feature that calls ``counter.add`` from its container
    (``pump``: one call after the other; ``pace``: at a steady rate). ``limits`` are the
    counter's."""
    app = TestApp(root)
    table = {"update": {**QUICK, **(update or {})}, **(policy or {})}
    counter(app.feature("counter", limits=limits, restart=restart(), policy=table), "1.0.0")
    if client:
        client_feature = app.feature(
            "client",
            requires=["counter"],
            limits=LIMITS,
            restart=restart(),
            policy={"call": ["counter.add"]},
        )
        pump(client_feature)
        pacer(client_feature)
    return app


def pump(feature: Feature) -> None:
    """``pump``: call ``counter.add`` ``n`` times (or until ``stop``), ``pause`` seconds
    apart; answers how many calls succeeded and the errors of those that failed."""
    stopped = {"now": False}

    @feature.service("stop")
    async def _stop(ctx: Context, request: Any) -> None:
        stopped["now"] = True

    @feature.service("pump")
    async def _pump(ctx: Context, request: Any) -> dict[str, Any]:
        done, errors = 0, []
        stopped["now"] = False
        for _ in range(request["n"]):
            if stopped["now"]:
                break
            try:
                await ctx.call("counter", "add", timeout=10)
                done += 1
            except Exception as exc:  # every failure is answered, then asserted
                errors.append(repr(exc))
            await trio.sleep(request["pause"])
        return {"done": done, "errors": errors}


def pacer(feature: Feature) -> None:
    """``pace``: call ``counter.add`` ``rate`` times a second for ``seconds``, each call in
    its own task (a held call does not hold up the next); answers how many succeeded and
    the errors of those that failed."""

    @feature.service("pace")
    async def _pace(ctx: Context, request: Any) -> dict[str, Any]:
        done, errors = 0, []

        async def one() -> None:
            nonlocal done
            try:
                await ctx.call("counter", "add", timeout=10)
                done += 1
            except Exception as exc:  # every failure is answered, then asserted
                errors.append(repr(exc))

        origin, rate = trio.current_time(), float(request["rate"])
        async with trio.open_nursery() as nursery:
            for index in range(int(rate * request["seconds"])):
                await trio.sleep_until(origin + index / rate)
                nursery.start_soon(one)
        return {"done": done, "errors": errors}


def audit_events(path: Path, *prefixes: str) -> list[dict[str, Any]]:
    """The audit lines whose event starts with one of ``prefixes``, in order."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line.get("event", "").startswith(prefixes)]


async def count(sup: Supervisor) -> dict[str, Any]:
    reply: dict[str, Any] = await sup.call("counter", "get")
    return reply
