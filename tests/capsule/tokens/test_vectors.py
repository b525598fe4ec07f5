"""Known-answer vectors pin the ctk1 format: any change to encoding or signing fails here."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from capsule._tokens._authority import TokenAuthority
from capsule._tokens._format import TokenClaims
from capsule.errors import InvalidTokenError
from capsule.tokens import KeyRing, parse_capability

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "tokens.json").read_text())


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(
        KeyRing.from_seed(bytes.fromhex(VECTORS["seed_hex"]), epoch=VECTORS["epoch"])
    )


def _claims(vector: dict[str, Any]) -> TokenClaims:
    return TokenClaims(
        jti=bytes.fromhex(vector["jti"]),
        aud=vector["aud"],
        iat=vector["nbf"],
        nbf=vector["nbf"],
        exp=vector["exp"],
        epoch=VECTORS["epoch"],
        caps=tuple(parse_capability(c) for c in vector["caps"]),
        chain=tuple(bytes.fromhex(j) for j in vector["chain"]),
    )


def test_the_public_key_matches_the_seed(authority: TokenAuthority) -> None:
    ring = KeyRing.from_seed(bytes.fromhex(VECTORS["seed_hex"]), epoch=VECTORS["epoch"])
    assert ring.public.public_bytes().hex() == VECTORS["public_key_hex"]


@pytest.mark.parametrize("vector", VECTORS["tokens"], ids=lambda v: v["name"])
def test_signing_the_claims_gives_the_known_token(
    authority: TokenAuthority, vector: dict[str, Any]
) -> None:
    assert authority._sign(_claims(vector)).text == vector["token"]


@pytest.mark.parametrize("vector", VECTORS["tokens"], ids=lambda v: v["name"])
def test_the_known_token_verifies_inside_its_window_only(
    authority: TokenAuthority, vector: dict[str, Any]
) -> None:
    claims = authority.verify_at_time(vector["token"], now=vector["nbf"], aud=vector["aud"])
    assert claims == _claims(vector)
    with pytest.raises(InvalidTokenError):
        authority.verify_at_time(vector["token"], now=vector["exp"], aud=vector["aud"])


@pytest.mark.parametrize("vector", VECTORS["tokens"], ids=lambda v: v["name"])
def test_the_layout_is_independently_checkable(vector: dict[str, Any]) -> None:
    """version | epoch | Ed25519(domain || header || body) | body, checked with raw cryptography."""
    text = vector["token"]
    assert text.startswith("ctk1.")
    raw = base64.urlsafe_b64decode(text[5:] + "=" * (-len(text[5:]) % 4))
    assert raw[0] == 1
    assert int.from_bytes(raw[1:5], "big") == VECTORS["epoch"]
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTORS["public_key_hex"]))
    key.verify(raw[5:69], b"capsule token v1\x00" + raw[:5] + raw[69:])
