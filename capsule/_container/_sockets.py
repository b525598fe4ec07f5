"""The streams ``ctx.connect`` and ``ctx.listen`` return: anyio socket streams and listeners
around the sockets the broker passed in, with trio's ``send_all`` spelling as well.

Wrapping only: no policy and no I/O of its own (every call goes to the anyio object inside,
on whichever backend runs; the container runtime runs trio).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any, final

import anyio.abc

__all__ = ["NetListener", "NetStream"]


@final
class NetStream(anyio.abc.SocketStream):
    """A TCP connection the broker opened for this feature: an ``anyio.abc.SocketStream``.

    ``send`` / ``send_all`` write all the bytes given, ``receive(max_bytes)`` returns what
    arrived (``anyio.EndOfStream`` once the peer has closed), ``send_eof`` shuts the
    writing half, and ``async with`` (or ``aclose``) closes it. The raw socket is
    ``stream.extra(anyio.abc.SocketAttribute.raw_socket)``.
    """

    def __init__(self, inner: anyio.abc.SocketStream) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return f"<NetStream {self._raw_socket!r}>"

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._inner.send(item)

    async def send_all(self, data: bytes) -> None:
        """Write all of ``data`` (trio's name for ``send``)."""
        await self._inner.send(data)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes

    @property
    def _raw_socket(self) -> socket.socket:
        attribute = anyio.abc.SocketAttribute.raw_socket
        raw: socket.socket = self._inner.extra(attribute)  # noqa: S610 - anyio, not Django
        return raw


@final
class NetListener(anyio.abc.SocketListener):
    """A TCP listening socket the broker opened for this feature: an
    ``anyio.abc.SocketListener`` whose ``accept()`` returns :class:`NetStream` objects.

    ``await listener.serve(handler)`` runs ``handler(stream)`` for each connection;
    ``aclose`` stops listening. The port it listens on is
    ``listener.extra(anyio.abc.SocketAttribute.local_port)``.
    """

    def __init__(self, inner: anyio.abc.SocketListener) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return f"<NetListener {self._raw_socket!r}>"

    async def accept(self) -> NetStream:
        return NetStream(await self._inner.accept())

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes

    @property
    def _raw_socket(self) -> socket.socket:
        attribute = anyio.abc.SocketAttribute.raw_socket
        raw: socket.socket = self._inner.extra(attribute)  # noqa: S610 - anyio, not Django
        return raw
