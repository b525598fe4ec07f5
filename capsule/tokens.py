"""Capability tokens: mint, attenuate, verify, revoke, and the capability vocabulary.

The recipe layer: raw Ed25519 stays in capsule._tokens._keys and nothing else touches keys.

    >>> from capsule.tokens import KeyRing, TokenAuthority
    >>> authority = TokenAuthority(KeyRing.generate())
    >>> token = authority.mint("spellcheck", ["icc:call:dictionary.lookup"], ttl=60)
    >>> authority.verify(token, aud="spellcheck").caps[0].target
    'dictionary.lookup'
"""

from __future__ import annotations

from capsule._facade import publish
from capsule._tokens._authority import Token as Token
from capsule._tokens._authority import TokenAuthority as TokenAuthority
from capsule._tokens._authority import TokenVerifier as TokenVerifier
from capsule._tokens._authority import inspect_token as inspect_token
from capsule._tokens._caps import ACTIONS as ACTIONS
from capsule._tokens._caps import LIMITS as LIMITS
from capsule._tokens._caps import Action as Action
from capsule._tokens._caps import Capability as Capability
from capsule._tokens._caps import covering as covering
from capsule._tokens._caps import is_subset as is_subset
from capsule._tokens._caps import parse_capability as parse_capability
from capsule._tokens._format import MAX_CAPABILITIES as MAX_CAPABILITIES
from capsule._tokens._format import MAX_CHAIN as MAX_CHAIN
from capsule._tokens._format import MAX_TOKEN_SIZE as MAX_TOKEN_SIZE
from capsule._tokens._format import TokenClaims as TokenClaims
from capsule._tokens._grant import Grant as Grant
from capsule._tokens._grant import compile_grant as compile_grant
from capsule._tokens._keys import KeyRing as KeyRing
from capsule._tokens._keys import PublicKeyRing as PublicKeyRing
from capsule._tokens._revocation import RevocationList as RevocationList
from capsule.errors import CapabilityDeniedError as CapabilityDeniedError
from capsule.errors import InvalidTokenError as InvalidTokenError

__all__ = [
    "ACTIONS",
    "LIMITS",
    "MAX_CAPABILITIES",
    "MAX_CHAIN",
    "MAX_TOKEN_SIZE",
    "Action",
    "Capability",
    "CapabilityDeniedError",
    "Grant",
    "InvalidTokenError",
    "KeyRing",
    "PublicKeyRing",
    "RevocationList",
    "Token",
    "TokenAuthority",
    "TokenClaims",
    "TokenVerifier",
    "compile_grant",
    "covering",
    "inspect_token",
    "is_subset",
    "parse_capability",
]

publish(__name__, globals(), __all__)
