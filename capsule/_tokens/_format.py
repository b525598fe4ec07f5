"""The token wire format: claims, binary layout, text form and the limits checked first.

Must not touch keys or verify anything: it splits and decodes; _authority decides.

Binary layout (all tokens, version 1)::

    byte 0       format version (1)
    bytes 1..4   key epoch, unsigned big-endian
    bytes 5..68  Ed25519 signature over DOMAIN || bytes 0..4 || body
    bytes 69..   body: msgpack array of TokenClaims

The epoch sits in the signed header so that the verifier can pick the key
without decoding anything; the body is decoded only after the signature holds,
and its own ``epoch`` must equal the header's. There is no algorithm field.

Text form: ``ctk1.`` followed by the unpadded base64url of the binary form.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final, final

import msgspec

from capsule._tokens._caps import Capability

__all__ = [
    "DOMAIN",
    "HEADER_SIZE",
    "MAX_CAPABILITIES",
    "MAX_CHAIN",
    "MAX_TEXT_LENGTH",
    "MAX_TOKEN_SIZE",
    "SIGNATURE_SIZE",
    "TEXT_PREFIX",
    "VERSION",
    "Split",
    "TokenClaims",
    "decode_claims",
    "decode_text",
    "encode_claims",
    "encode_text",
    "split",
]

VERSION: Final = 1
DOMAIN: Final = b"capsule token v1\x00"
TEXT_PREFIX: Final = "ctk1."
HEADER_SIZE: Final = 5
SIGNATURE_SIZE: Final = 64
JTI_SIZE: Final = 16

#: hard limits, all checked before any cryptography or decoding
MAX_TOKEN_SIZE: Final = 4096
MAX_TEXT_LENGTH: Final = len(TEXT_PREFIX) + (MAX_TOKEN_SIZE * 4 + 2) // 3
MAX_CAPABILITIES: Final = 32
MAX_CHAIN: Final = 8  # derivation depth
MAX_AUDIENCE_LENGTH: Final = 63

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+")


@final
class TokenClaims(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What a token says. Obtained only from a verified token (or ``inspect_token``).

    Times are Unix seconds. ``chain`` lists the ids of the tokens this one was
    derived from, root first, so revoking any ancestor refuses it.
    """

    jti: bytes
    aud: str
    iat: float
    nbf: float
    exp: float
    epoch: int
    caps: tuple[Capability, ...]
    chain: tuple[bytes, ...] = ()

    @property
    def token_id(self) -> str:
        """The token id (``jti``) as 32 hex digits, as logs, errors and the CLI show it."""
        return self.jti.hex()

    @property
    def parent_id(self) -> str | None:
        return self.chain[-1].hex() if self.chain else None


@final
class Split(msgspec.Struct, frozen=True):
    """A token cut into its parts, nothing decoded or verified yet."""

    version: int
    epoch: int
    signature: bytes
    signed: bytes  # DOMAIN || header || body: exactly what the signature covers
    body: bytes


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(TokenClaims)


def encode_claims(claims: TokenClaims) -> bytes:
    return _encoder.encode(claims)


def decode_claims(body: bytes) -> TokenClaims:
    """Decode a body once its signature holds; raises msgspec.DecodeError or ValidationError."""
    return _decoder.decode(body)


def header(epoch: int) -> bytes:
    return bytes([VERSION]) + epoch.to_bytes(4, "big")


def split(raw: bytes) -> Split | None:
    """Cut raw token bytes into parts, or None when the size or layout is wrong."""
    if not HEADER_SIZE + SIGNATURE_SIZE < len(raw) <= MAX_TOKEN_SIZE:
        return None
    signature = raw[HEADER_SIZE : HEADER_SIZE + SIGNATURE_SIZE]
    body = raw[HEADER_SIZE + SIGNATURE_SIZE :]
    return Split(
        version=raw[0],
        epoch=int.from_bytes(raw[1:HEADER_SIZE], "big"),
        signature=signature,
        signed=DOMAIN + raw[:HEADER_SIZE] + body,
        body=body,
    )


def encode_text(raw: bytes) -> str:
    return TEXT_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_text(text: str) -> bytes | None:
    """The raw bytes of a text token, or None when it is not one (checked before decoding)."""
    text = text.strip()
    if len(text) > MAX_TEXT_LENGTH or not text.startswith(TEXT_PREFIX):
        return None
    payload = text[len(TEXT_PREFIX) :]
    if not _B64URL.fullmatch(payload) or len(payload) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return None
    if encode_text(raw) != TEXT_PREFIX + payload:
        return None  # non-canonical base64 (stray low bits): one token, one spelling
    return raw
