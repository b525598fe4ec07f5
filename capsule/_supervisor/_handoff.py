"""Moving a feature's state from its running version to a new one during a live update.

The state travels as a sealed memory file passed by descriptor: the old container writes
its export into a file the supervisor passes it, the supervisor seals the file and passes
it on to the new container. It never decodes, unpickles or looks into the state, copies
it only for state kept in its own memory (an on-demand feature's, across an idle stop),
and decides nothing about the update.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import final

import anyio

from capsule._broker._connection import Connection
from capsule._ipc._channel import encode_frame
from capsule._ipc._messages import ExportState, ImportState, StateDone
from capsule._ipc._statefile import StateFile, StateFileError
from capsule.errors import ProtocolError

__all__ = ["Handoff", "HandoffError", "StateFile"]


class HandoffError(Exception):
    """A state transfer failed: the hook raised, the state was too large, or the container
    did not answer in time or ended. The message says which."""


@dataclass(slots=True)
class _Transfer:
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

    def received(self, message: StateDone) -> None:
        """A StateDone from the container (ProtocolError for a transfer never asked)."""
        transfer = self._transfers.get(message.id)
        if transfer is None:
            raise ProtocolError(f"ended state transfer {message.id}, which it was not asked")
        transfer.hooked = message.hooked
        transfer.error = transfer.error or message.error
        transfer.done.set()

    def ended(self) -> None:
        """The container ended: every transfer it had fails."""
        for transfer in self._transfers.values():
            transfer.error = transfer.error or "its container ended"
            transfer.done.set()

    async def export_state(self, limit: int, timeout: float) -> StateFile | None:  # noqa: ASYNC109 - the bound is the update's, passed down
        """A sealed file holding what the feature's ``export_state`` hook returned (None
        without a hook; the caller closes it); HandoffError when the hook failed, the state
        exceeded ``limit`` bytes or the hook took over ``timeout``."""
        try:
            state = StateFile.blank()
        except StateFileError as exc:
            raise HandoffError(f"export_state of {self._feature}: {exc}") from None
        try:
            number, transfer = self._open()
            frame = encode_frame(ExportState(id=number, limit=limit))
            self._pass(transfer, frame, state)
            await self._finish(number, transfer, timeout, "export_state")
            if not transfer.hooked:
                state.close()
                return None
            try:
                state.seal(limit)
            except StateFileError as exc:
                raise HandoffError(f"export_state of {self._feature}: {exc}") from None
        except BaseException:
            state.close()
            raise
        return state

    async def import_state(
        self,
        from_version: str,
        data: StateFile | bytes,
        timeout: float,  # noqa: ASYNC109 - the bound is the update's, passed down
    ) -> bool:
        """Give the state (a sealed file, or bytes kept in memory) to the feature's
        ``import_state`` hook; whether it has one. HandoffError when the hook raised or took
        over ``timeout``. A file stays the caller's to close."""
        if isinstance(data, StateFile):
            state = data
        else:
            try:
                state = StateFile.holding(data)
            except StateFileError as exc:
                raise HandoffError(f"import_state of {self._feature}: {exc}") from None
        try:
            number, transfer = self._open()
            frame = encode_frame(ImportState(id=number, from_version=from_version))
            self._pass(transfer, frame, state)
            await self._finish(number, transfer, timeout, "import_state")
        finally:
            if state is not data:
                state.close()
        return transfer.hooked

    def _open(self) -> tuple[int, _Transfer]:
        number = next(self._ids)
        transfer = self._transfers[number] = _Transfer()
        if self._conn.closed:
            transfer.error = "its container ended"
            transfer.done.set()
        return number, transfer

    def _pass(self, transfer: _Transfer, frame: bytes, state: StateFile) -> None:
        """Send ``frame`` with a descriptor of ``state``; were the kernel to refuse the
        descriptor, the frame goes without it and the container answers that none came."""
        if transfer.done.is_set():
            return
        if not self._conn.pass_socket(frame, state.passed(), frame):
            transfer.error = "its container ended, or stopped reading its channel"
            transfer.done.set()

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
