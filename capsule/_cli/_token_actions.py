"""What ``capsule token`` does: key generation and rotation, mint, inspect, verify,
attenuate, revoke.

Must not hold token logic: everything goes through capsule.tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from capsule._cli._common import EXIT_OK, EXIT_PROBLEMS
from capsule._units import parse_duration
from capsule.errors import ConfigError, InvalidTokenError
from capsule.tokens import (
    KeyRing,
    RevocationList,
    TokenAuthority,
    TokenClaims,
    inspect_token,
)

__all__ = ["attenuate", "inspect", "keygen", "mint", "revoke", "rotate", "verify"]

EXIT_REFUSED = EXIT_PROBLEMS


def _read_token(text: str) -> str:
    return sys.stdin.read().strip() if text == "-" else text.strip()


def _authority(args: argparse.Namespace) -> TokenAuthority:
    revocations = (
        RevocationList.load(args.revocations)
        if getattr(args, "revocations", None)
        else RevocationList()
    )
    return TokenAuthority(KeyRing.load(args.key), revocations=revocations)


def keygen(args: argparse.Namespace) -> int:
    path = Path(args.keyfile)
    if path.exists() and not args.force:
        raise ConfigError("key file already exists (use --force to replace it)", path=str(path))
    ring = KeyRing.generate(epoch=args.epoch)
    ring.save(path, replace=args.force)
    print(f"wrote signing key epoch {ring.epoch} to {path} (mode 0600)")
    return EXIT_OK


def rotate(args: argparse.Namespace) -> int:
    ring = KeyRing.load(args.keyfile).rotated()
    ring.save(args.keyfile, replace=True)
    print(f"rotated {args.keyfile} to epoch {ring.epoch}: tokens of older epochs are now refused")
    return EXIT_OK


def mint(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, key="--ttl")
    token = _authority(args).mint(args.aud, args.cap, ttl=ttl)
    print(token.text)
    return EXIT_OK


def inspect(args: argparse.Namespace) -> int:
    try:
        claims = inspect_token(_read_token(args.token))
    except InvalidTokenError:
        raise ConfigError("not a well-formed capsule token (ctk1.…)", key="TOKEN") from None
    if args.json:
        print(json.dumps(_claims_json(claims, verified=False), indent=2))
    else:
        print(_describe(claims, "UNVERIFIED: signature, expiry and revocation not checked"))
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    verifier = _authority(args).verifier
    now = time.time() if args.at is None else args.at
    claims, reason = verifier.diagnose(_read_token(args.token), aud=args.aud, now=now)
    if claims is None:
        print(f"capsule: token refused: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    print(_describe(claims, "VERIFIED"))
    return EXIT_OK


def attenuate(args: argparse.Namespace) -> int:
    ttl = None if args.ttl is None else parse_duration(args.ttl, key="--ttl")
    authority = _authority(args)
    parent = _read_token(args.token)
    claims, reason = authority.verifier.diagnose(parent, aud=args.holder)
    if claims is None:
        print(f"capsule: parent token refused: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    token = authority.attenuate(parent, args.cap, holder=args.holder, aud=args.aud, ttl=ttl)
    print(token.text)
    return EXIT_OK


def revoke(args: argparse.Namespace) -> int:
    revocations = RevocationList.load(args.revocations)
    ids: list[bytes] = []
    for text in args.tokens:
        value = _read_token(text)
        if len(value) == 32 and all(ch in "0123456789abcdef" for ch in value):
            ids.append(bytes.fromhex(value))
            continue
        try:
            ids.append(inspect_token(value).jti)
        except InvalidTokenError:
            raise ConfigError(
                f"{value[:24]!r} is neither a capsule token nor a 32-hex token id",
                key="TOKEN_OR_ID",
            ) from None
    for jti in ids:
        revocations.revoke(jti)
        print(f"revoked {jti.hex()}")
    revocations.save(args.revocations)
    return EXIT_OK


def _time(value: float) -> str:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC).isoformat(timespec="seconds")


def _describe(claims: TokenClaims, status: str) -> str:
    now = time.time()
    remaining = claims.exp - now
    left = f"expires in {remaining:.0f}s" if remaining > 0 else f"expired {-remaining:.0f}s ago"
    lines = [
        f"token {claims.token_id}  ({status})",
        f"  audience      {claims.aud}",
        f"  key epoch     {claims.epoch}",
        f"  issued        {_time(claims.iat)}",
        f"  valid         {_time(claims.nbf)} .. {_time(claims.exp)}  ({left})",
        f"  derived from  {claims.parent_id or '- (root token)'}"
        + (f"  (depth {len(claims.chain)})" if claims.chain else ""),
        "  capabilities",
        *(f"    {cap}" for cap in claims.caps),
    ]
    return "\n".join(lines)


def _claims_json(claims: TokenClaims, *, verified: bool) -> dict[str, object]:
    return {
        "token_id": claims.token_id,
        "verified": verified,
        "aud": claims.aud,
        "epoch": claims.epoch,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "exp": claims.exp,
        "chain": [j.hex() for j in claims.chain],
        "capabilities": [str(cap) for cap in claims.caps],
    }
