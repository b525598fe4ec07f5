"""The state handoff's protocol, against a stand-in container on a socketpair: the state
travels in a memory file passed by descriptor, sealed by the supervisor before its size is
read and before any other container sees it; no descriptor is left behind."""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from capsule._broker._connection import Connection, Outbox
from capsule._ipc._channel import Channel
from capsule._ipc._messages import ExportState, FromSupervisor, ImportState, StateDone
from capsule._ipc._statefile import StateFile, StateFileError, read_state, write_state
from capsule._supervisor._handoff import Handoff, HandoffError

LIMIT = 1 << 20
STATE = b"the state after the last call"


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@dataclass
class _Container:
    """The container's end: the descriptors it kept, the mappings it holds, what it read."""

    channel: Channel[FromSupervisor]
    kept: list[int] = field(default_factory=list)
    maps: list[mmap.mmap] = field(default_factory=list)
    imported: list[bytes] = field(default_factory=list)


Answer = Callable[[_Container, ExportState | ImportState, int], Awaitable[None]]


@asynccontextmanager
async def _pair(answer: Answer) -> AsyncIterator[tuple[Handoff, _Container]]:
    """A Handoff whose container answers each ExportState/ImportState with ``answer``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    outbox = Outbox()
    conn = Connection(ours, "store", outbox)
    handoff = Handoff("store", conn)
    container = _Container(Channel(theirs, FromSupervisor, passed_fds=True))

    def dispatch(message: object) -> None:
        assert isinstance(message, StateDone)
        handoff.received(message)

    async def serve() -> None:
        while True:
            message = await container.channel.receive()
            assert isinstance(message, ExportState | ImportState)
            await answer(container, message, container.channel.take_passed_fd())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            nursery.start_soon(conn.write_loop)
            nursery.start_soon(conn.read_loop, dispatch)
            nursery.start_soon(serve)
            yield handoff, container
            nursery.cancel_scope.cancel()
    finally:
        conn.close()
        theirs.close()
        for kept in container.maps:
            kept.close()
        for fd in container.kept:
            os.close(fd)


async def _done(container: _Container, message: ExportState | ImportState) -> None:
    await container.channel.send(StateDone(id=message.id, hooked=True))


@pytest.mark.trio
async def test_an_export_is_sealed_against_the_container_that_wrote_it() -> None:
    before = _fds()

    async def export(container: _Container, message: ExportState | ImportState, fd: int) -> None:
        write_state(fd, STATE)
        container.kept.append(fd)  # a container that keeps its descriptor after StateDone
        await _done(container, message)

    with trio.fail_after(5):
        async with _pair(export) as (handoff, container):
            state = await handoff.export_state(LIMIT, 5)
            assert state is not None
            with state:
                assert (state.size, state.read()) == (len(STATE), STATE)
                (kept,) = container.kept
                with pytest.raises(PermissionError):
                    os.pwrite(kept, b"changed", 0)
                with pytest.raises(PermissionError):
                    os.ftruncate(kept, 0)
                with pytest.raises(PermissionError):  # nor a new writable mapping
                    mmap.mmap(kept, len(STATE))
                assert state.read() == STATE
    assert _fds() == before


@pytest.mark.trio
async def test_an_export_fails_while_the_container_holds_a_writable_mapping_of_it() -> None:
    before = _fds()

    async def export(container: _Container, message: ExportState | ImportState, fd: int) -> None:
        write_state(fd, STATE)
        container.maps.append(mmap.mmap(fd, len(STATE)))  # shared and writable
        os.close(fd)
        await _done(container, message)

    with trio.fail_after(5):
        async with _pair(export) as (handoff, _):
            with pytest.raises(HandoffError, match="a writable mapping of it is still held"):
                await handoff.export_state(LIMIT, 5)
    assert _fds() == before


@pytest.mark.trio
async def test_an_export_grown_past_the_limit_is_refused_whatever_the_container_said() -> None:
    async def export(container: _Container, message: ExportState | ImportState, fd: int) -> None:
        os.ftruncate(fd, LIMIT + 1)  # sparse: costs it nothing, and is still too large
        os.close(fd)
        await _done(container, message)

    with trio.fail_after(5):
        async with _pair(export) as (handoff, _):
            with pytest.raises(HandoffError, match=rf"{LIMIT + 1} bytes of state, over"):
                await handoff.export_state(LIMIT, 5)


@pytest.mark.trio
async def test_without_a_hook_an_export_is_none_and_leaves_no_file() -> None:
    before = _fds()

    async def export(container: _Container, message: ExportState | ImportState, fd: int) -> None:
        os.close(fd)
        await container.channel.send(StateDone(id=message.id, hooked=False))

    with trio.fail_after(5):
        async with _pair(export) as (handoff, _):
            assert await handoff.export_state(LIMIT, 5) is None
    assert _fds() == before


@pytest.mark.trio
async def test_an_import_gets_a_sealed_file_holding_exactly_the_state() -> None:
    before = _fds()

    async def load(container: _Container, message: ExportState | ImportState, fd: int) -> None:
        assert isinstance(message, ImportState)
        assert message.from_version == "1.0.0"
        container.imported.append(read_state(fd))
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        os.close(fd)
        await _done(container, message)

    with trio.fail_after(5):
        async with _pair(load) as (handoff, container):
            with StateFile.holding(STATE) as state:  # a file, as an update passes it on
                assert await handoff.import_state("1.0.0", state, 5)
                assert state.read() == STATE  # still the caller's, still open
            assert await handoff.import_state("1.0.0", b"kept in memory", 5)  # bytes
            assert container.imported == [STATE, b"kept in memory"]
    assert _fds() == before


@pytest.mark.trio
async def test_a_hook_failure_is_the_transfers_error() -> None:
    async def load(container: _Container, message: ExportState | ImportState, fd: int) -> None:
        os.close(fd)
        await container.channel.send(
            StateDone(id=message.id, hooked=True, error="ValueError: cannot read it")
        )

    with trio.fail_after(5):
        async with _pair(load) as (handoff, _):
            with pytest.raises(HandoffError, match="import_state of store: ValueError: cannot"):
                await handoff.import_state("1.0.0", STATE, 5)


def test_a_state_file_is_refused_once_closed() -> None:
    state = StateFile.holding(STATE)
    state.close()
    state.close()  # idempotent
    with pytest.raises(StateFileError, match="closed"):
        state.passed()
