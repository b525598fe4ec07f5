"""Fair turns on the broker's loop: budgets per turn, and pacing a flooding connection."""

from __future__ import annotations

import socket

import anyio
import msgspec
import pytest
import trio
import trio.testing

from capsule._broker._connection import Connection, Outbox
from capsule._broker._fairness import (
    ACTIVE_NS,
    FLOOD_TURNS,
    TURN_FRAMES,
    TURN_NS,
    Share,
    Turns,
)
from capsule._ipc._channel import encode_frame
from capsule._ipc._messages import FromContainer, Publish


def _trio_ns() -> int:
    """The trio clock in ns (1 added: 0 means "no turn" to a Share)."""
    return int(trio.current_time() * 1e9) + 1


async def _flood_turns(share: Share, count: int, *, turn_s: float) -> None:
    """``count`` turns that each spend their budget, each taking ``turn_s``."""
    for _ in range(count):
        share.begin()
        await trio.sleep(turn_s)  # dispatching, as far as the clock can tell
        assert share.spent()
        await share.end()


def test_a_turn_ends_after_its_frames_or_its_time() -> None:
    now = [1]
    turns = Turns(clock=lambda: now[0])
    share = turns.share()
    share.begin()
    assert not any(share.spent() for _ in range(TURN_FRAMES - 1))
    assert share.spent()
    share.rest()
    share.begin()
    assert not share.spent()
    now[0] += TURN_NS
    assert share.spent()  # one expensive frame is a turn's worth


def test_begin_during_a_turn_does_not_start_a_new_one() -> None:
    turns = Turns(clock=lambda: 1)
    share = turns.share()
    share.begin()
    for _ in range(TURN_FRAMES - 1):
        share.spent()
        share.begin()  # the read loop refilled its buffer without waiting
    assert share.spent()


@pytest.mark.trio
async def test_a_flooding_connection_alone_is_never_made_to_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = Turns(clock=_trio_ns)
    flooder = turns.share()
    start = trio.current_time()
    await _flood_turns(flooder, 4 * FLOOD_TURNS, turn_s=0.001)
    assert trio.current_time() - start == pytest.approx(4 * FLOOD_TURNS * 0.001)
    assert turns.paced == 0


@pytest.mark.trio
async def test_a_flooding_connection_waits_as_long_as_its_turn_while_another_is_active(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = Turns(clock=_trio_ns)
    flooder, quiet = turns.share(), turns.share()
    await _flood_turns(flooder, FLOOD_TURNS - 1, turn_s=0.001)
    quiet.begin()  # the quiet one dispatches a frame
    assert not quiet.spent()
    quiet.rest()
    start = trio.current_time()
    await _flood_turns(flooder, 1, turn_s=0.001)
    # its turn (1 ms), then as long again while the other may use the loop
    assert trio.current_time() - start == pytest.approx(0.002)
    assert turns.paced == 1


@pytest.mark.trio
async def test_pacing_stops_once_the_others_are_quiet_or_the_flood_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = Turns(clock=_trio_ns)
    flooder, quiet = turns.share(), turns.share()
    quiet.begin()
    quiet.rest()
    await _flood_turns(flooder, FLOOD_TURNS, turn_s=0.001)
    assert turns.paced == 1
    await trio.sleep(ACTIVE_NS / 1e9)  # the other has not dispatched since
    await _flood_turns(flooder, FLOOD_TURNS, turn_s=0.001)
    assert turns.paced == 1
    quiet.begin()
    quiet.rest()
    flooder.rest()  # it waited for its socket: a new flood starts counting afresh
    await _flood_turns(flooder, FLOOD_TURNS - 1, turn_s=0.001)
    assert turns.paced == 1
    assert flooder.flooding == FLOOD_TURNS - 1


def _frame() -> bytes:
    return encode_frame(Publish(handle=1, topic="t.x", payload=msgspec.Raw(b"\x01")))


@pytest.mark.trio
async def test_a_quiet_connection_is_dispatched_within_one_turn_of_a_flood() -> None:
    """A connection flooding the broker with buffered frames is read in turns: a quiet
    connection's frame is dispatched after at most a turn of the flood, and once the flood
    has gone on for FLOOD_TURNS turns beside it, the flood is paced (the loop waits for
    ``paced`` to count ten such pauses)."""
    outbox, turns = Outbox(), Turns()
    flood_ours, flood_theirs = socket.socketpair()
    quiet_ours, quiet_theirs = socket.socketpair()
    flood_theirs.setblocking(False)
    frames = 0
    with flood_theirs, quiet_theirs, trio.fail_after(10):
        flood = Connection(flood_ours, "flooder", outbox, turns)
        quiet = Connection(quiet_ours, "quiet", outbox, turns)
        order: list[str] = []

        def dispatch_flood(message: FromContainer) -> None:
            order.append("flood")

        def dispatch_quiet(message: FromContainer) -> None:
            order.append("quiet")

        def fill() -> None:
            nonlocal frames
            while True:
                try:
                    flood_theirs.send(_frame())
                except BlockingIOError:
                    return
                frames += 1

        async def keep_flooding() -> None:
            while True:
                fill()
                await trio.lowlevel.wait_writable(flood_theirs)

        fill()  # the flooder's socket is full before anything is read
        quiet_theirs.sendall(_frame())
        async with anyio.create_task_group() as tg:
            tg.start_soon(flood.read_loop, dispatch_flood)
            tg.start_soon(quiet.read_loop, dispatch_quiet)
            tg.start_soon(keep_flooding)
            while turns.paced < 10:
                await trio.sleep(0.001)
                quiet_theirs.sendall(_frame())  # the quiet one keeps talking
            tg.cancel_scope.cancel()
        flood.close()
        quiet.close()
    assert order.index("quiet") <= TURN_FRAMES
    assert order.count("flood") >= FLOOD_TURNS * TURN_FRAMES
