"""Payloads: the msgpack data a call, reply, event or stream item carries, as msgspec.Raw.

Data only: encoding refuses anything but msgpack data, decoding builds plain values and
never runs code; both name what they were working on when they fail.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from capsule.errors import ProtocolError

__all__ = ["NIL", "decode_payload", "encode_payload"]

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()

NIL: Final = msgspec.Raw(_encoder.encode(None))


def encode_payload(value: Any, what: str) -> msgspec.Raw:
    """``value`` as a payload; TypeError naming ``what`` if it is not msgpack data."""
    try:
        return msgspec.Raw(_encoder.encode(value))
    except (msgspec.EncodeError, TypeError, OverflowError) as exc:
        raise TypeError(f"{what}: {exc} (payloads are msgpack data)") from None


def decode_payload(raw: msgspec.Raw | bytes, what: str) -> Any:
    """The value of a payload; ProtocolError naming ``what`` if it does not decode."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError, not DecodeError, for a string that is not UTF-8
        raise ProtocolError(f"{what}: undecodable payload: {exc}") from None
