"""Shared pieces of the plugin tests: plugin bundles written to disk (real code files, as an
operator would install them), and an app that leaves room for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capsule.testing import TestApp
from tests.capsule.supervisor.helpers import LIMITS, echo_feature

#: the code of the ``counter`` plugin: counts words, waits, keeps a note in private storage
COUNTER = """
import os

import anyio

from capsule.feature import Feature

feature = Feature()


@feature.service("count")
async def count(ctx, text):
    return len(str(text).split())


@feature.service("wait")
async def wait(ctx, seconds):
    await anyio.sleep(seconds)
    return seconds


@feature.service("keep")
async def keep(ctx, text):
    with open("/state/note", "w", encoding="utf-8") as out:
        out.write(text)
    return os.listdir("/state")
"""

#: the code of the ``relay`` plugin: calls counter.count from its own container
RELAY = """
from capsule.feature import Feature

feature = Feature()


@feature.service("relay")
async def relay(ctx, text):
    try:
        return {"answer": await ctx.call("counter", "count", text)}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
"""

#: a plugin whose start fails
BROKEN = """
from capsule.feature import Feature

feature = Feature()


@feature.on_start
async def start(ctx):
    raise RuntimeError("cannot start: no configuration")


@feature.service("count")
async def count(ctx, text):
    return 0
"""


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"


def write_plugin(
    root: Path,
    name: str,
    code: str,
    *,
    services: tuple[str, ...],
    version: str = "1.0.0",
    access: Mapping[str, Any] | None = None,
    directory: str | None = None,
) -> Path:
    """Write a plugin bundle ``root/plugins/<directory or name>``; returns its directory."""
    bundle = root / "plugins" / (directory or name)
    bundle.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    (bundle / f"{module}.py").write_text(code, encoding="utf-8")
    lines = [
        "[feature]",
        f'name = "{name}"',
        f'version = "{version}"',
        f'entry = "{module}:feature"',
        "",
        "[provides]",
        f"services = {toml(list(services))}",
        "",
        "[limits]",
        *(f"{key} = {toml(value)}" for key, value in LIMITS.items()),
    ]
    if access:
        lines += ["", "[access]", *(f"{key} = {toml(value)}" for key, value in access.items())]
    (bundle / "capsule.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return bundle


def plugin_app(root: Path, plugins: Mapping[str, Any] | None = None) -> TestApp:
    """An app of one ``echo`` feature whose ``[plugins]`` table is ``plugins`` (by default:
    calls to counter, private storage at /state)."""
    app = TestApp(root / "app")
    echo_feature(app, "echo")
    app.plugins = dict(
        plugins
        if plugins is not None
        else {
            "call": ["counter.*"],
            "fs": [{"path": "/state", "mode": "private", "quota": "1MiB"}],
        }
    )
    return app


def counter(root: Path, **options: Any) -> Path:
    """The ``counter`` plugin bundle (asks for private storage at /state)."""
    access = {"fs": [{"path": "/state", "mode": "rw"}]}
    return write_plugin(
        root, "counter", COUNTER, services=("count", "wait", "keep"), access=access, **options
    )


def relay(root: Path) -> Path:
    """The ``relay`` plugin bundle (asks to call counter.count)."""
    return write_plugin(
        root, "relay", RELAY, services=("relay",), access={"call": ["counter.count"]}
    )
