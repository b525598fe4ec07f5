"""The ``Feature`` object a bundle's module builds, and the context its handlers receive.

Registration only: decorators record handlers; running them is the runtime's job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, final

from capsule._broker._topics import valid_pattern, valid_topic

if TYPE_CHECKING:
    from capsule._container._client import BrokerClient, HeldToken, ItemStream
    from capsule._container._sockets import NetListener, NetStream

__all__ = ["Context", "ExportHook", "Feature", "Handler", "Hook", "ImportHook", "Listener"]

Handler: TypeAlias = Callable[["Context", Any], Awaitable[Any]]
Listener: TypeAlias = Callable[["Context", Any], Awaitable[None]]
Hook: TypeAlias = Callable[["Context"], Awaitable[None]]
ExportHook: TypeAlias = Callable[["Context"], Awaitable[bytes]]
ImportHook: TypeAlias = Callable[["Context", str, bytes], Awaitable[None]]
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

    async def connect(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the deadline travels with the request
    ) -> NetStream:
        """A TCP connection to ``host``:``port``, opened by the supervisor for this feature.

        The container has no network of its own: the broker checks the ``net:connect``
        grant, connects from the supervisor's network namespace and passes the connected
        socket in. It comes back as an ``anyio.abc.SocketStream`` (``send``, also spelled
        ``send_all``; ``receive``; ``send_eof``; ``aclose``)::

            async with await ctx.connect("127.0.0.1", 8080) as stream:
                await stream.send_all(b"ping")
                reply = await stream.receive()

        ``host`` must be written as the app grants it: a name (``localhost``,
        ``api.example.org``; any case) or an address (``127.0.0.1``, ``::1``); other
        spellings of an address (``2130706433``, ``0177.0.0.1``, ``::ffff:127.0.0.1``) are
        refused, and a name never matches a grant of an address or the other way round.
        A granted name is resolved once, by the supervisor, and the connection goes to an
        address it checked: never a link-local, cloud metadata or other special address,
        nor a loopback one unless the name is ``localhost``, except an address the app
        grants literally as well. ``timeout`` bounds resolving and connecting (default
        10 s, at most 120 s).

        Raises CapabilityDeniedError (a PermissionError) when no grant covers it, or when
        the grant's ``conns`` limit (default: 64 open sockets per container) is reached;
        ConnectionRefusedError, TimeoutError, socket.gaierror or another OSError when
        the destination cannot be reached, as ``socket.create_connection`` would;
        OverloadedError with 8 connects in progress already.
        """
        return await self._client.connect(host, port, timeout)

    async def listen(self, host: str, port: int, *, backlog: int = 128) -> NetListener:
        """A TCP socket listening on ``host``:``port``, opened by the supervisor under the
        ``net:listen`` grant and passed in, as an ``anyio.abc.SocketListener``:
        ``stream = await listener.accept()`` (a stream like :meth:`connect`'s), or
        ``await listener.serve(handler)``. Closing the listener stops listening.

        ``host`` follows the rules of :meth:`connect`. The listener lives in the
        supervisor's network namespace, so whoever can reach that address and port can
        connect to it. Raises as :meth:`connect` does (OSError such as
        ``EADDRINUSE`` when the port is taken).
        """
        return await self._client.listen(host, port, backlog)


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
        self.state_export: ExportHook | None = None
        self.state_import: ImportHook | None = None

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

    def export_state(self, hook: H) -> H:
        """Register ``async def hook(ctx) -> bytes``: during a live update, the running
        version's state for the new one, asked for once its calls have drained.

        Bytes only (encode it yourself: JSON, msgspec...); the supervisor carries them
        to the new version without reading them, up to the app's ``state_max``. Without
        this hook the new version starts fresh (its private storage is kept either way).
        An on-demand feature's hook also runs when it is stopped as idle: the bytes wait in
        the supervisor's memory for its next container's ``import_state``.
        """
        if self.state_export is not None:
            raise ValueError("export_state is registered twice")
        self.state_export = hook
        return hook

    def import_state(self, hook: H) -> H:
        """Register ``async def hook(ctx, from_version, data)``: during a live update, the
        new version receives what the running version's ``export_state`` returned, after
        its ``on_start`` hooks and before it takes any call. Raising fails the update: the
        new version is stopped and the running one keeps serving. An on-demand feature
        woken after an idle stop receives what it exported then (raising there is logged
        and audited, and it runs on with what ``on_start`` made)."""
        if self.state_import is not None:
            raise ValueError("import_state is registered twice")
        self.state_import = hook
        return hook

    def __repr__(self) -> str:
        return f"<Feature services={sorted(self.services)} topics={sorted(self.listeners)}>"
