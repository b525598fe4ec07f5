"""The ``Feature`` object a bundle's module builds, and the context its handlers receive.

Registration only: decorators record handlers; running them is the runtime's job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, final

from capsule._tokens._format import TokenClaims

__all__ = ["Context", "Feature", "Handler", "Hook", "Listener"]

Handler: TypeAlias = Callable[["Context", Any], Awaitable[Any]]
Listener: TypeAlias = Callable[["Context", Any], Awaitable[None]]
Hook: TypeAlias = Callable[["Context"], Awaitable[None]]
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


@final
class Context:
    """What a handler knows about the container it runs in: who it is and what it holds.

    Built by the runtime, never by feature code.
    """

    def __init__(self, feature: str, version: str, tokens: tuple[str, ...]) -> None:
        self.feature = feature
        self.version = version
        self.tokens = tokens
        self.claims: tuple[TokenClaims, ...] = ()

    def __repr__(self) -> str:
        return f"<Context {self.feature} {self.version}, {len(self.tokens)} token(s)>"


@final
class Feature:
    """A feature's services, event listeners and lifecycle hooks.

    ::

        feature = Feature()

        @feature.service("check")
        async def check(ctx, request): ...
    """

    def __init__(self) -> None:
        self.services: dict[str, Handler] = {}
        self.listeners: dict[str, list[Listener]] = {}
        self.start_hooks: list[Hook] = []
        self.stop_hooks: list[Hook] = []

    def service(self, name: str) -> Callable[[H], H]:
        """Register ``async def handler(ctx, request)`` as the service ``name``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a service name must be a non-empty string, not {name!r}")

        def register(handler: H) -> H:
            if name in self.services:
                raise ValueError(f"service {name!r} is registered twice")
            self.services[name] = handler
            return handler

        return register

    def on(self, topic: str) -> Callable[[H], H]:
        """Register ``async def listener(ctx, event)`` for events on ``topic``."""
        if not topic or not isinstance(topic, str):
            raise ValueError(f"a topic must be a non-empty string, not {topic!r}")

        def register(listener: H) -> H:
            self.listeners.setdefault(topic, []).append(listener)
            return listener

        return register

    def on_start(self, hook: H) -> H:
        """Run ``async def hook(ctx)`` once the sandbox is up, before the feature is ready."""
        self.start_hooks.append(hook)
        return hook

    def on_stop(self, hook: H) -> H:
        """Run ``async def hook(ctx)`` when the supervisor stops the feature (within its grace)."""
        self.stop_hooks.append(hook)
        return hook

    def __repr__(self) -> str:
        return f"<Feature services={sorted(self.services)} topics={sorted(self.listeners)}>"
