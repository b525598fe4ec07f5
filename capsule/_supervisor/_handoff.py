"""Moving a feature's state from its running version to a new one during a live update.

Carries opaque bytes between two containers, in pieces, bounded in size and time: it
never decodes, unpickles or looks into the state, and decides nothing about the update.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final, final

import anyio

from capsule._broker._connection import Connection
from capsule._ipc._messages import STATE_PART, ExportState, ImportState, StateDone, StatePart
from capsule.errors import ProtocolError

__all__ = ["Handoff", "HandoffError"]

_PACE: Final = 4 * STATE_PART
"""Bytes of state queued towards a container before the next piece waits for it to read
(woken by the connection's writes as the container reads, not by a poll)."""


class HandoffError(Exception):
    """A state transfer failed: the hook raised, the state was too large, or the container
    did not answer in time or ended. The message says which."""


@dataclass(slots=True)
class _Transfer:
    limit: int
    pieces: list[bytes] = field(default_factory=list)
    size: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)
    hooked: bool = False
    error: str = ""


@final
class Handoff:
    """The state transfers of one container: what it exports, what it is given to import."""

    def __init__(self, feature: str, conn: Connection) -> None:
        self._feature = feature
        self._conn = conn
        self._ids = itertools.count(1)
        self._transfers: dict[int, _Transfer] = {}

    def received(self, message: StatePart | StateDone) -> None:
        """A StatePart or StateDone from the container (ProtocolError for one never asked)."""
        transfer = self._transfers.get(message.id)
        if transfer is None:
            raise ProtocolError(f"sent state for transfer {message.id}, which it was not asked")
        if isinstance(message, StateDone):
            transfer.hooked = message.hooked
            transfer.error = transfer.error or message.error
            transfer.done.set()
            return
        transfer.size += len(message.data)
        if transfer.size > transfer.limit:  # kept no further: the export is refused anyway
            transfer.pieces.clear()
            transfer.error = (
                f"exported more than {transfer.limit} bytes of state "
                "(update.state_max of its policy in app.toml)"
            )
        elif not transfer.error:
            transfer.pieces.append(message.data)

    def ended(self) -> None:
        """The container ended: every transfer it had fails."""
        for transfer in self._transfers.values():
            transfer.error = transfer.error or "its container ended"
            transfer.done.set()

    async def export_state(self, limit: int, timeout: float) -> bytes | None:  # noqa: ASYNC109 - the bound is the update's, passed down
        """What the feature's ``export_state`` hook returned (None without a hook);
        HandoffError when it failed, exceeded ``limit`` bytes or took over ``timeout``."""
        number, transfer = self._open(limit)
        self._conn.send(ExportState(id=number, limit=limit))
        await self._finish(number, transfer, timeout, "export_state")
        return b"".join(transfer.pieces) if transfer.hooked else None

    async def import_state(self, from_version: str, data: bytes, timeout: float) -> bool:  # noqa: ASYNC109 - the bound is the update's, passed down
        """Give ``data`` to the feature's ``import_state`` hook; whether it has one.
        HandoffError when the hook raised or took over ``timeout``."""
        number, transfer = self._open(0)
        with anyio.move_on_after(timeout):
            last = max(0, len(data) - 1) // STATE_PART
            for index in range(last + 1):
                if self._conn.queued > _PACE and not transfer.done.is_set():
                    await self._conn.wait_queued_below(_PACE)
                piece = data[index * STATE_PART : (index + 1) * STATE_PART]
                self._conn.send(
                    ImportState(
                        id=number, from_version=from_version, data=piece, last=index == last
                    )
                )
        await self._finish(number, transfer, timeout, "import_state")
        return transfer.hooked

    def _open(self, limit: int) -> tuple[int, _Transfer]:
        number = next(self._ids)
        transfer = self._transfers[number] = _Transfer(limit)
        if self._conn.closed:
            transfer.error = "its container ended"
            transfer.done.set()
        return number, transfer

    async def _finish(
        self,
        number: int,
        transfer: _Transfer,
        timeout: float,  # noqa: ASYNC109 - the bound is the update's, passed down
        hook: str,
    ) -> None:
        try:
            with anyio.move_on_after(timeout):
                await transfer.done.wait()
        finally:
            del self._transfers[number]
        if not transfer.done.is_set():
            transfer.error = f"{hook} did not finish within {timeout:g}s"
        if transfer.error:
            raise HandoffError(f"{hook} of {self._feature}: {transfer.error}")
