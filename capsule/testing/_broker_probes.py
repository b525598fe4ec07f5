"""Hostile broker clients a test runs inside a container: what the runtime never sends.

Never imported by the runtime itself. Probes report the broker's answer as data instead of raising.

Register :func:`probe` as a service of an inline feature (it travels by reference, like the
fault service) and drive it from the host with ``{"op": ..., ...}`` requests; the frame
builders also run on the host, for tests of the decoder.
"""

from __future__ import annotations

import array
import functools
import os
import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from capsule._container._feature import Context
from capsule._ipc._channel import HEADER, MAX_FRAME, encode_frame
from capsule._ipc._messages import (
    CHANNEL_FD,
    Entry,
    Hello,
    Log,
    Publish,
    Request,
    Result,
    Revoke,
    SandboxStatus,
    Start,
    Subscribe,
)
from capsule._ipc._payload import decode_payload as decode
from capsule.errors import CapsuleError

__all__ = [
    "FRAMES",
    "NIL",
    "frame",
    "innocent_frame",
    "probe",
    "send_with_fd",
    "shut_channel",
    "write_raw",
]

NIL: Final = msgspec.msgpack.encode(None)
#: request ids far beyond the ones the container's own client counts up to.
_FAR_ID: Final = 1 << 40


# -- frames the runtime never writes (pure: they also run on the host) ----------------------


def frame(body: bytes) -> bytes:
    """``body`` behind a correct length prefix, whatever it holds."""
    return len(body).to_bytes(HEADER, "big") + body


def innocent_frame() -> bytes:
    """A well-formed frame (a log line): what rides along when the breach is elsewhere."""
    return encode_frame(Log(stream="stdout", text="nothing to see here"))


def _garbage() -> bytes:
    return frame(b"\xc1" * 16)  # 0xc1 is the one byte msgpack never uses


def _not_utf8() -> bytes:
    return frame(b"\x92\xa3\x80nd\xc0")  # ["\x80nd", nil]: a tag that is not UTF-8


def _oversized() -> bytes:
    return (2 * MAX_FRAME).to_bytes(HEADER, "big") + b"\x90" * 64


def _truncated() -> bytes:
    whole = encode_frame(Log(stream="stdout", text="x" * 64))
    return whole[: len(whole) // 2]


def _hello() -> bytes:
    status = SandboxStatus(
        namespaces={},
        uid_map="0 0 4294967295",
        uid=0,
        no_new_privs=False,
        dumpable=True,
        seccomp=0,
        landlock_abi=0,
        capabilities=-1,
        fds=[],
        pid=1,
    )
    return encode_frame(Hello(status=status))


def _start() -> bytes:
    start = Start(
        feature="attacker",
        version="6.6.6",
        tokens=[],
        code=Entry(module="os", attribute="system"),
        bundle="/",
        env=[],
    )
    return encode_frame(start)


def _deep(depth: int = 100_000) -> bytes:
    payload = msgspec.Raw(b"\x91" * depth + b"\xc0")  # [[[...[nil]...]]]
    request = Request(id=_FAR_ID, handle=1, feature="bystander", service="ping", payload=payload)
    return encode_frame(request)


#: name -> the bytes of one protocol breach, as written to the channel.
FRAMES: Final[dict[str, Callable[[], bytes]]] = {
    "garbage": _garbage,
    "not-utf8": _not_utf8,
    "oversized": _oversized,
    "truncated": _truncated,
    "hello": _hello,
    "start": _start,
    "deep": _deep,
}


# -- raw access to the container's channel --------------------------------------------------


def write_raw(data: bytes) -> None:
    """Write ``data`` to the channel behind the runtime's back (the socket is non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            sent = os.write(CHANNEL_FD, view)
        except BlockingIOError:
            select.select([], [CHANNEL_FD], [], 1.0)
            continue
        view = view[sent:]


def send_with_fd(data: bytes, fd: int) -> None:
    """Write ``data`` with descriptor ``fd`` attached (SCM_RIGHTS)."""
    with socket.socket(fileno=os.dup(CHANNEL_FD)) as sock:
        rights = array.array("i", [fd])
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights.tobytes())])


def shut_channel() -> None:
    """Shut the channel down in both directions (the supervisor reads end-of-file)."""
    with socket.socket(fileno=os.dup(CHANNEL_FD)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


# -- messages the client would not send -------------------------------------------------------


def _refused(exc: CapsuleError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": type(exc).__name__,
        "reason": str(getattr(exc, "reason", "") or exc),
        "capability": str(getattr(exc, "capability", "")),
    }


def _handle(ctx: Context, which: Any) -> int:
    """A handle number as given, the handle of the held token ``which`` names, or the first."""
    if isinstance(which, int):
        return which
    for held in ctx.tokens:
        if which is None or held.token_id == which:
            return held.handle
    raise LookupError(f"{ctx.feature} holds no token {which!r}")


def _payload(request: dict[str, Any]) -> bytes:
    raw = request.get("raw")
    if isinstance(raw, bytes):
        return raw
    return msgspec.msgpack.encode(request.get("payload"))


async def _admit(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    try:
        held = await ctx._client.admit(request["token"])
    except CapsuleError as exc:
        return _refused(exc)
    return {"ok": True, "handle": held.handle, "token_id": held.token_id}


async def _request(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    handle = _handle(ctx, request.get("handle"))
    raw = msgspec.Raw(_payload(request))
    try:
        answer = await ctx._client.ask(
            lambda i: Request(
                id=i,
                handle=handle,
                feature=request["feature"],
                service=request["service"],
                payload=raw,
                timeout=request.get("timeout"),
            )
        )
    except CapsuleError as exc:
        return _refused(exc)
    if not isinstance(answer, Result):
        return {"ok": False, "error": type(answer).__name__, "reason": "", "capability": ""}
    return {"ok": True, "value": decode(answer.value, "reply")}


async def _subscribe(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    handle = _handle(ctx, request.get("handle"))
    results: dict[str, Any] = {}
    patterns: list[str] = request["patterns"]
    for pattern in patterns:
        try:  # Subscribe(id, ...): the client passes the request id first
            await ctx._client.ask(functools.partial(Subscribe, handle=handle, pattern=pattern))
        except CapsuleError as exc:
            results[pattern] = _refused(exc)
        else:
            results[pattern] = {"ok": True}
    return results


async def _publish(ctx: Context, request: dict[str, Any]) -> int:
    """One-way: the broker answers nothing, so the test reads the audit log and the receivers."""
    handle = _handle(ctx, request.get("handle"))
    topics: list[str] = request["topics"]
    raw = request.get("raw")
    for topic in topics:
        payload = msgspec.Raw(raw if isinstance(raw, bytes) else msgspec.msgpack.encode(topic))
        await ctx._client._send(Publish(handle=handle, topic=topic, payload=payload))
    return len(topics)


async def _call(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    try:
        value = await ctx.call(
            request["feature"], request["service"], request.get("payload"),
            timeout=request.get("timeout"),
        )  # fmt: skip
    except CapsuleError as exc:
        return _refused(exc)
    return {"ok": True, "value": value}


async def _delegate(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    try:
        token_id = await ctx.delegate(request["caps"], to=request["to"], ttl=request.get("ttl"))
    except CapsuleError as exc:
        return _refused(exc)
    return {"ok": True, "token_id": token_id}


async def _revoke(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    try:
        answer = await ctx._client.ask(lambda i: Revoke(id=i, token_id=request["token_id"]))
    except CapsuleError as exc:
        return _refused(exc)
    assert isinstance(answer, Result)  # noqa: S101 - Revoke is answered with a Result
    return {"ok": True, "revoked": decode(answer.value, "revocation")}


async def _handles(ctx: Context, request: dict[str, Any]) -> dict[str, int]:
    return {held.token_id: held.handle for held in ctx.tokens}


_OPS: Final[dict[str, Callable[[Context, dict[str, Any]], Awaitable[Any]]]] = {
    "admit": _admit,
    "request": _request,
    "subscribe": _subscribe,
    "publish": _publish,
    "call": _call,
    "delegate": _delegate,
    "revoke": _revoke,
    "handles": _handles,
}


async def probe(ctx: Context, request: dict[str, Any]) -> Any:
    """``{"op": name, ...}``: send the broker what the op says and report its answer as data.

    ``admit`` (``token``), ``request`` (``feature``, ``service``, ``handle``: a number, a
    held token id or None for the first held token, ``payload`` or ``raw`` msgpack bytes),
    ``subscribe`` (``patterns``), ``publish`` (``topics``, one way; each event's payload is
    its topic, or ``raw``), ``call`` (through
    ``ctx.call``), ``delegate`` (``caps``, ``to``, ``ttl``), ``revoke`` (``token_id``) and
    ``handles`` (token id -> handle number).
    """
    return await _OPS[request["op"]](ctx, request)
