"""capsule.feature: what a feature's code imports to declare its services and hooks.

::

    from capsule.feature import Feature

    feature = Feature()

    @feature.service("check")
    async def check(ctx, request):
        return {"ok": True}
"""

from __future__ import annotations

from capsule._container._feature import Context as Context
from capsule._container._feature import Feature as Feature
from capsule._facade import publish

__all__ = ["Context", "Feature"]

publish(__name__, globals(), __all__)
