"""Regenerate tests/vectors/tokens.json (known-answer vectors for the ctk1 token format).

Run only when the format changes on purpose: `python tests/vectors/make_token_vectors.py`.
The test suite checks the implementation against the committed file, not against this script.
"""

from __future__ import annotations

import json
from pathlib import Path

from capsule._tokens._authority import TokenAuthority
from capsule._tokens._caps import parse_capability
from capsule._tokens._format import TokenClaims
from capsule.tokens import KeyRing

SEED = bytes(range(32))
T0 = 1_790_000_000.0


def main() -> None:
    ring = KeyRing.from_seed(SEED, epoch=3)
    authority = TokenAuthority(ring)
    cases = [
        {
            "name": "root token, three kinds",
            "claims": TokenClaims(
                jti=bytes.fromhex("00112233445566778899aabbccddeeff"),
                aud="spellcheck",
                iat=T0,
                nbf=T0,
                exp=T0 + 60,
                epoch=3,
                caps=tuple(
                    parse_capability(c)
                    for c in (
                        "icc:call:dictionary.lookup",
                        "icc:publish:spell.*",
                        "fs:read:/data/words/",
                        "net:connect:127.0.0.1:8080",
                    )
                ),
            ),
        },
        {
            "name": "derived token with limits and a chain",
            "claims": TokenClaims(
                jti=bytes.fromhex("ffeeddccbbaa99887766554433221100"),
                aud="editor",
                iat=T0 + 1,
                nbf=T0 + 1,
                exp=T0 + 30.5,
                epoch=3,
                caps=(parse_capability("fs:read,write:/state/notes/?bytes=1048576&inodes=64"),),
                chain=(bytes.fromhex("00112233445566778899aabbccddeeff"),),
            ),
        },
    ]
    out = {
        "format": "ctk1",
        "domain": "capsule token v1\\x00",
        "seed_hex": SEED.hex(),
        "epoch": 3,
        "public_key_hex": ring.public.public_bytes().hex(),
        "tokens": [],
    }
    for case in cases:
        claims = case["claims"]
        assert isinstance(claims, TokenClaims)
        token = authority._sign(claims)
        out["tokens"].append(  # type: ignore[attr-defined]
            {
                "name": case["name"],
                "token": token.text,
                "jti": claims.token_id,
                "aud": claims.aud,
                "nbf": claims.nbf,
                "exp": claims.exp,
                "caps": [str(c) for c in claims.caps],
                "chain": [j.hex() for j in claims.chain],
            }
        )
    path = Path(__file__).with_name("tokens.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")  # noqa: T201


if __name__ == "__main__":
    main()
