"""The ``Feature`` object a bundle's module builds, and the context its handlers receive.

Registration only: decorators record handlers; running them is the runtime's job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, final

from capsule._broker._topics import valid_pattern, valid_topic

if TYPE_CHECKING:
    from capsule._container._client import BrokerClient, HeldToken, ItemStream

__all__ = ["Context", "Feature", "Handler", "Hook", "Listener"]

Handler: TypeAlias = Callable[["Context", Any], Awaitable[Any]]
Listener: TypeAlias = Callable[["Context", Any], Awaitable[None]]
Hook: TypeAlias = Callable[["Context"], Awaitable[None]]
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


@final
class Context:
    """What a handler can do: who it is, what it holds, and the broker to act through.

    Built by the runtime, never by feature code. Every action goes through the
    broker, which checks it against the tokens this container holds; one outside
    them raises CapabilityDeniedError naming the capability lacked.
    """

    def __init__(self, feature: str, version: str, client: BrokerClient) -> None:
        self.feature = feature
        self.version = version
        self._client = client

    def __repr__(self) -> str:
        return f"<Context {self.feature} {self.version}, {len(self._client.held)} token(s)>"

    @property
    def caller(self) -> str | None:
        """Who called the running handler (a feature, or ``"@host"``); None outside a call."""
        from capsule._container._client import CALLER  # noqa: PLC0415 - avoids an import cycle

        return CALLER.get()

    @property
    def tokens(self) -> tuple[HeldToken, ...]:
        """The tokens this container holds, delegated ones included."""
        return tuple(self._client.held)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Every capability held, in text form."""
        return tuple(c for held in self._client.held for c in held.capabilities)

    async def call(
        self,
        feature: str,
        service: str,
        payload: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the deadline travels with the call
    ) -> Any:
        """Call ``feature.service``; its reply, or the error it raised as RemoteError."""
        return await self._client.call(feature, service, payload, timeout)

    def stream(
        self,
        feature: str,
        service: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        window: int = 16,
    ) -> ItemStream:
        """Call a streaming service: ``async with ctx.stream(...) as items: async for ...``.

        ``timeout`` bounds the wait for each value; ``window`` is how far ahead the
        service may run (backpressure).
        """
        return self._client.stream(feature, service, payload, timeout, window)

    async def publish(self, topic: str, payload: Any = None) -> None:
        """Publish an event on ``topic`` to every feature subscribed to it."""
        await self._client.publish(topic, payload)

    async def delegate(
        self, capabilities: str | Sequence[str], *, to: str, ttl: float | None = None
    ) -> str:
        """Hand feature ``to`` a narrowed part of this feature's authority; returns the new
        token's id. It lasts until ``ttl`` seconds pass, its parent ends or it is revoked."""
        wanted = [capabilities] if isinstance(capabilities, str) else list(capabilities)
        return await self._client.delegate(wanted, to, ttl)

    async def revoke(self, token_id: str) -> int:
        """Revoke a token this feature delegated, and all derived from it; returns how many."""
        return await self._client.revoke(token_id)


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
        """Register ``async def handler(ctx, request)`` as the service ``name``.

        A handler may also be an async generator (or return an async iterator): it is
        then a stream, called with ``ctx.stream`` / ``sup.stream``.
        """
        if not isinstance(name, str) or not valid_topic(name):
            raise ValueError(
                f"a service name is dot-separated lower-case ASCII names, e.g. check, not {name!r}"
            )

        def register(handler: H) -> H:
            if name in self.services:
                raise ValueError(f"service {name!r} is registered twice")
            self.services[name] = handler
            return handler

        return register

    def on(self, topic: str) -> Callable[[H], H]:
        """Register ``async def listener(ctx, event)`` for events on ``topic`` (a topic, or
        a pattern such as ``spell.*``); the app must grant subscribing to it."""
        if not isinstance(topic, str) or not valid_pattern(topic):
            raise ValueError(
                f"a topic is dot-separated lower-case ASCII names, optionally ending in '.*', "
                f"not {topic!r}"
            )

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
