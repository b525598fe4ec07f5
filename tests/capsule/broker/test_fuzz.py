"""Fuzzing the channel's frame decoder and the broker's read path with hypothesis.

Whatever bytes a container writes, in whatever pieces they arrive, the supervisor gets messages
of the closed set or a ProtocolError, never another exception; and a real Broker reading them
through a real Connection stops only with ProtocolError or ChannelClosedError.
"""

from __future__ import annotations

import itertools
import socket
import typing
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Final
from unittest import mock

import anyio
import msgspec
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from capsule._broker import _broker
from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._broker._connection import Connection
from capsule._broker._topics import valid_call, valid_topic
from capsule._ipc._channel import HEADER, FrameBuffer, encode_frame
from capsule._ipc._messages import (
    Admit,
    Cancel,
    Delegate,
    End,
    Failure,
    FromContainer,
    Item,
    Log,
    More,
    Publish,
    Ready,
    Reply,
    Request,
    Revoke,
    Subscribe,
)
from capsule.errors import ChannelClosedError, FeatureCrashedError, ProtocolError
from capsule.tokens import KeyRing, TokenAuthority

_MESSAGE_TYPES: Final = typing.get_args(FromContainer)
_YEAR: Final = 366 * 24 * 3600.0
#: what the fuzzed connection's one real token allows (handle 1, see _read_through_broker)
_CAPS: Final = ["icc:call:a.*", "icc:publish:t.*", "icc:subscribe:t.*"]

# --- strategies ---------------------------------------------------------------------------------


def _text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


_ids = st.integers(0, 3) | st.integers(0, 2**62)
_handles = st.sampled_from([0, 1, 3]) | _ids  # 1 is the admitted token's handle
_names = st.sampled_from(["a", "b", "svc", "t.x", "t.*", "a.b", "*", "A", ""]) | _text(24)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | _text(8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text(4), inner, max_size=3),
    max_leaves=8,
)
_payloads = _values.map(lambda value: msgspec.Raw(msgspec.msgpack.encode(value)))
_seconds = st.none() | st.floats(0, _YEAR)

#: messages the admitted token allows (the broker forwards them: calls fail, no feature "a")
_granted: st.SearchStrategy[Any] = st.one_of(
    st.builds(
        Request,
        id=_ids,
        handle=st.just(1),
        feature=st.just("a"),
        service=st.sampled_from(["svc", "x.y"]),
        payload=_payloads,
        timeout=_seconds,
        stream=st.booleans(),
        window=st.integers(0, 1 << 20),
    ),
    st.builds(
        Publish, handle=st.just(1), topic=st.sampled_from(["t.x", "t.y.z"]), payload=_payloads
    ),
    st.builds(Subscribe, id=_ids, handle=st.just(1), pattern=st.sampled_from(["t.*", "t.x"])),
)
#: what a running container may send the broker (each is dispatched by it)
_to_broker: st.SearchStrategy[Any] = _granted | st.one_of(
    st.builds(
        Request,
        id=_ids,
        handle=_handles,
        feature=_names,
        service=_names,
        payload=_payloads,
        timeout=_seconds,
        stream=st.booleans(),
        window=st.integers(0, 1 << 20),
    ),
    st.builds(Publish, handle=_handles, topic=_names, payload=_payloads),
    st.builds(Subscribe, id=_ids, handle=_handles, pattern=_names),
    st.builds(Admit, id=_ids, token=_text(64)),
    st.builds(
        Delegate,
        id=_ids,
        handle=_handles,
        to=st.sampled_from(["fuzz"]) | _names,
        capabilities=st.lists(st.sampled_from(_CAPS) | _names, max_size=3),
        ttl=_seconds,
    ),
    st.builds(Revoke, id=_ids, token_id=_text(32)),
    st.builds(Reply, id=_ids, value=_payloads),
    st.builds(Failure, id=_ids, type=_names, message=_text(16), traceback=_text(16)),
    st.builds(Item, id=_ids, value=_payloads),
    st.builds(End, id=_ids),
    st.builds(More, id=_ids, n=st.integers(0, 1 << 20)),
    st.builds(Cancel, id=_ids),
)
#: every message a container may send (the supervisor handles Log and Ready itself)
_messages: st.SearchStrategy[Any] = _to_broker | st.one_of(
    st.builds(Log, stream=st.sampled_from(["stdout", "stderr"]), text=_text(16)),
    st.builds(Ready, services=st.lists(_names, max_size=2), topics=st.lists(_names, max_size=2)),
)


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big") + body


def _mutated(args: tuple[Any, bytes, int]) -> bytes:
    """A valid frame with some bytes of its body overwritten (its length prefix kept)."""
    message, noise, position = args
    frame = encode_frame(message)
    at = HEADER + position % max(1, len(frame) - HEADER)
    return frame[:at] + noise + frame[at + len(noise) :]


_junk = st.one_of(
    st.binary(max_size=256),  # mostly a length prefix far over the limit
    st.binary(max_size=256).map(_framed),  # a correct prefix, random msgpack
    st.tuples(_messages, st.binary(min_size=1, max_size=4), st.integers(0, 10**6)).map(_mutated),
)
_pieces = st.lists(_messages.map(encode_frame) | _junk, max_size=6).map(b"".join)
#: mostly messages the broker dispatches, then perhaps something that breaks the protocol
_conversations = st.tuples(
    st.lists(_to_broker.map(encode_frame), max_size=12).map(b"".join), st.just(b"") | _pieces
).map(b"".join)
_sizes = st.lists(st.integers(1, 64), min_size=1, max_size=8)


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(data):
            return
        yield data[start : start + size]
        start += size


# --- the frame decoder ------------------------------------------------------------------------


@settings(deadline=None, max_examples=500)
@given(data=_pieces, sizes=_sizes)
@example(data=_framed(b"\x92\xa3\x80nd\x00"), sizes=[1])  # a tag that is not UTF-8 (regression)
def test_any_bytes_in_any_pieces_decode_to_messages_or_a_protocol_error(
    data: bytes, sizes: list[int]
) -> None:
    frames: FrameBuffer[FromContainer] = FrameBuffer(FromContainer)
    try:
        for chunk in _chunks(data, sizes):
            frames.feed(chunk)
            while (message := frames.next()) is not None:
                assert isinstance(message, _MESSAGE_TYPES)
    except ProtocolError:
        pass  # the channel is unusable from here: the supervisor ends the container


@settings(deadline=None, max_examples=200)
@given(messages=st.lists(_messages, max_size=6), sizes=_sizes)
def test_valid_frames_round_trip_in_any_pieces(messages: list[Any], sizes: list[int]) -> None:
    data = b"".join(encode_frame(message) for message in messages)
    frames: FrameBuffer[FromContainer] = FrameBuffer(FromContainer)
    decoded = []
    for chunk in _chunks(data, sizes):
        frames.feed(chunk)
        while (message := frames.next()) is not None:
            decoded.append(message)
    assert decoded == messages
    assert frames.pending == 0


# --- the broker's read path -------------------------------------------------------------------


async def _read_through_broker(data: bytes) -> BaseException:
    """Feed one admitted token and then ``data`` to a real Broker over a real socketpair."""
    authority = TokenAuthority(KeyRing.generate())
    token = authority.mint("fuzz", _CAPS, ttl=60).text
    ours, theirs = socket.socketpair()
    with theirs, trio.fail_after(10):
        async with anyio.create_task_group() as tg:
            broker = Broker(
                authority,
                AuditLog(None, app="t", run="r"),
                lambda name: None,
                tg,
                call_timeout=1,
            )
            conn = Connection(ours, "fuzz", broker.outbox)
            peer = broker.attach(conn, "fuzz")
            theirs.sendall(encode_frame(Admit(id=1, token=token)) + data)
            theirs.shutdown(socket.SHUT_WR)
            with pytest.raises((ProtocolError, ChannelClosedError)) as ended:
                await conn.read_loop(lambda message: broker.dispatch(peer, message))
            broker.detach(peer, FeatureCrashedError("fuzz", "ended"))
            conn.close()
            tg.cancel_scope.cancel()
    return ended.value


@settings(deadline=None, max_examples=300)
@given(data=_conversations)
def test_a_broker_reading_any_bytes_ends_only_with_a_protocol_or_channel_error(
    data: bytes,
) -> None:
    handles = itertools.count()  # handle numbers 1, 3, 5...: the fuzzed frames can name them
    numbers = SimpleNamespace(randbits=lambda bits: 2 * next(handles))
    with mock.patch.object(_broker, "secrets", numbers):
        ended = trio.run(_read_through_broker, data)
    assert isinstance(ended, ProtocolError | ChannelClosedError)


# --- names ------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(
    feature=st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
    service=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,12}", fullmatch=True),
)
def test_a_call_name_seen_before_never_makes_a_topic_valid(feature: str, service: str) -> None:
    """Regression: call targets and topics shared one cache, so after ``feature.service`` was
    checked, the topic ``"feature\\0service"`` passed as valid."""
    assert valid_call(feature, service)
    assert not valid_topic(feature + "\x00" + service)
    assert not valid_topic(feature + "\x00" + service)  # and not once cached either
