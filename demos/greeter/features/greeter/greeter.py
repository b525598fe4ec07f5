"""greeter: greets people by name, with a template from its view, and counts greetings.

Its view holds the templates volume at /templates (read-only) and its own private
storage at /state, where the count survives restarts and updates.
"""

from __future__ import annotations

from typing import Any

import anyio

from capsule.feature import Feature

TEMPLATE = anyio.Path("/templates/hello.txt")
COUNT = anyio.Path("/state/count")

feature = Feature()


@feature.service("greet")
async def greet(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """``{"name": "Ada"}`` -> ``{"text": "Hello, Ada!", "count": N}``."""
    name = str(request["name"])
    template = await TEMPLATE.read_text(encoding="utf-8")
    count = int(await COUNT.read_text()) + 1 if await COUNT.exists() else 1
    await COUNT.write_text(str(count))
    await ctx.publish("greeter.greeted", {"name": name, "count": count})
    return {"text": template.strip().format(name=name), "count": count}
