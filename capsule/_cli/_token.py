"""``capsule token``: key generation and rotation, mint, inspect, verify, attenuate, revoke.

Must not hold token logic: everything goes through capsule.tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from capsule._cli._common import EXIT_OK, EXIT_PROBLEMS, Parser
from capsule._units import parse_duration
from capsule.errors import ConfigError, InvalidTokenError
from capsule.tokens import (
    KeyRing,
    RevocationList,
    TokenAuthority,
    TokenClaims,
    inspect_token,
)

__all__ = ["register"]

EXIT_REFUSED = EXIT_PROBLEMS


def register(sub: argparse._SubParsersAction[Any]) -> None:
    token = sub.add_parser(
        "token",
        help="generate keys; mint, inspect, verify, attenuate and revoke capability tokens",
        description="Capability tokens: Ed25519-signed, audience-bound, expiring, attenuable.",
    )
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=Parser)
    tsub.required = True

    p = tsub.add_parser("keygen", help="create a new signing key file (mode 0600)")
    p.add_argument("keyfile", metavar="KEYFILE")
    p.add_argument("--epoch", type=int, default=1, help="key epoch (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(handler=_keygen)

    p = tsub.add_parser(
        "rotate", help="replace the key with a new epoch; older tokens stop working"
    )
    p.add_argument("keyfile", metavar="KEYFILE")
    p.set_defaults(handler=_rotate)

    p = tsub.add_parser("mint", help="mint a token for a feature and print it")
    _key_option(p)
    p.add_argument("--aud", required=True, metavar="FEATURE", help="the feature that will hold it")
    p.add_argument(
        "--cap",
        action="append",
        required=True,
        metavar="CAP",
        help="e.g. icc:call:dictionary.lookup",
    )
    p.add_argument("--ttl", default="1h", help="lifetime, e.g. 60s, 15m, 1h (default 1h)")
    p.set_defaults(handler=_mint)

    p = tsub.add_parser("inspect", help="show a token's claims WITHOUT verifying it")
    _token_argument(p)
    p.add_argument("--json", action="store_true", help="print the claims as JSON")
    p.set_defaults(handler=_inspect)

    p = tsub.add_parser("verify", help="verify a token: exit 0 when valid, 1 when refused")
    _key_option(p)
    p.add_argument("--aud", metavar="FEATURE", help="require this audience")
    _revocations_option(p)
    p.add_argument("--at", type=float, metavar="UNIX_TIME", help="verify as of this time")
    _token_argument(p)
    p.set_defaults(handler=_verify)

    p = tsub.add_parser("attenuate", help="derive a narrower token from a valid one and print it")
    _key_option(p)
    p.add_argument(
        "--cap", action="append", metavar="CAP", help="keep only these (each ⊆ one parent cap)"
    )
    p.add_argument("--aud", metavar="FEATURE", help="hand it to another feature")
    p.add_argument("--holder", metavar="FEATURE", help="require the parent's audience to be this")
    p.add_argument("--ttl", help="shorter lifetime, e.g. 30s (never beyond the parent's)")
    _revocations_option(p)
    _token_argument(p)
    p.set_defaults(handler=_attenuate)

    p = tsub.add_parser(
        "revoke", help="add tokens (and all derived from them) to a revocation file"
    )
    p.add_argument("--revocations", required=True, metavar="FILE", help="revocation file to update")
    p.add_argument(
        "tokens", nargs="+", metavar="TOKEN_OR_ID", help="a token, '-' for stdin, or a 32-hex id"
    )
    p.set_defaults(handler=_revoke)


def _key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="KEYFILE", help="signing key file (mode 0600)")


def _revocations_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revocations", metavar="FILE", help="revocation file (one token id per line)")


def _token_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("token", metavar="TOKEN", help="the ctk1. token text, or '-' to read stdin")


def _read_token(text: str) -> str:
    return sys.stdin.read().strip() if text == "-" else text.strip()


def _authority(args: argparse.Namespace) -> TokenAuthority:
    revocations = (
        RevocationList.load(args.revocations)
        if getattr(args, "revocations", None)
        else RevocationList()
    )
    return TokenAuthority(KeyRing.load(args.key), revocations=revocations)


def _keygen(args: argparse.Namespace) -> int:
    path = Path(args.keyfile)
    if path.exists() and not args.force:
        raise ConfigError("key file already exists (use --force to replace it)", path=str(path))
    ring = KeyRing.generate(epoch=args.epoch)
    ring.save(path, replace=args.force)
    print(f"wrote signing key epoch {ring.epoch} to {path} (mode 0600)")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    ring = KeyRing.load(args.keyfile).rotated()
    ring.save(args.keyfile, replace=True)
    print(f"rotated {args.keyfile} to epoch {ring.epoch}: tokens of older epochs are now refused")
    return EXIT_OK


def _mint(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, key="--ttl")
    token = _authority(args).mint(args.aud, args.cap, ttl=ttl)
    print(token.text)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    try:
        claims = inspect_token(_read_token(args.token))
    except InvalidTokenError:
        raise ConfigError("not a well-formed capsule token (ctk1.…)", key="TOKEN") from None
    if args.json:
        print(json.dumps(_claims_json(claims, verified=False), indent=2))
    else:
        print(_describe(claims, "UNVERIFIED: signature, expiry and revocation not checked"))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    verifier = _authority(args).verifier
    now = time.time() if args.at is None else args.at
    claims, reason = verifier.diagnose(_read_token(args.token), aud=args.aud, now=now)
    if claims is None:
        print(f"capsule: token refused: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    print(_describe(claims, "VERIFIED"))
    return EXIT_OK


def _attenuate(args: argparse.Namespace) -> int:
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


def _revoke(args: argparse.Namespace) -> int:
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
