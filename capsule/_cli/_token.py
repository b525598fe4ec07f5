"""``capsule token``: its arguments (keygen, rotate, mint, inspect, verify, attenuate, revoke).

Arguments only: it must not import what the command runs (``_token_actions``, imported when it
runs), so that ``capsule --help`` stays light.
"""

from __future__ import annotations

import argparse
from typing import Any

from capsule._cli._common import Parser, lazy

__all__ = ["register"]


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
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "keygen"))

    p = tsub.add_parser(
        "rotate", help="replace the key with a new epoch; older tokens stop working"
    )
    p.add_argument("keyfile", metavar="KEYFILE")
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "rotate"))

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
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "mint"))

    p = tsub.add_parser("inspect", help="show a token's claims WITHOUT verifying it")
    _token_argument(p)
    p.add_argument("--json", action="store_true", help="print the claims as JSON")
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "inspect"))

    p = tsub.add_parser("verify", help="verify a token: exit 0 when valid, 1 when refused")
    _key_option(p)
    p.add_argument("--aud", metavar="FEATURE", help="require this audience")
    _revocations_option(p)
    p.add_argument("--at", type=float, metavar="UNIX_TIME", help="verify as of this time")
    _token_argument(p)
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "verify"))

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
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "attenuate"))

    p = tsub.add_parser(
        "revoke", help="add tokens (and all derived from them) to a revocation file"
    )
    p.add_argument("--revocations", required=True, metavar="FILE", help="revocation file to update")
    p.add_argument(
        "tokens", nargs="+", metavar="TOKEN_OR_ID", help="a token, '-' for stdin, or a 32-hex id"
    )
    p.set_defaults(handler=lazy("capsule._cli._token_actions", "revoke"))


def _key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="KEYFILE", help="signing key file (mode 0600)")


def _revocations_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revocations", metavar="FILE", help="revocation file (one token id per line)")


def _token_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("token", metavar="TOKEN", help="the ctk1. token text, or '-' to read stdin")
