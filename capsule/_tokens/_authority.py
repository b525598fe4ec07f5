"""Minting, attenuating, verifying and revoking tokens: the safe recipes over the format.

Must not let the signing key out: TokenVerifier holds public keys only, and every
refusal leaves as one opaque InvalidTokenError (the reason goes to the log).
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Final, final

import msgspec
import structlog

from capsule._tokens._caps import Capability, cover, parse_capability
from capsule._tokens._format import (
    DOMAIN,
    JTI_SIZE,
    MAX_AUDIENCE_LENGTH,
    MAX_CAPABILITIES,
    MAX_CHAIN,
    MAX_TOKEN_SIZE,
    SIGNATURE_SIZE,
    VERSION,
    TokenClaims,
    decode_claims,
    decode_text,
    encode_claims,
    encode_text,
    header,
    split,
)
from capsule._tokens._keys import KeyRing, PublicKeyRing
from capsule._tokens._revocation import RevocationList
from capsule.errors import CapabilityDeniedError, ConfigError, InvalidTokenError

__all__ = ["Token", "TokenAuthority", "TokenVerifier", "inspect_token", "revoked_reason"]

_log = structlog.get_logger("capsule.tokens")

_AUDIENCE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
DEFAULT_TTL: Final = 3600.0
MAX_TTL: Final = 366 * 24 * 3600.0


def revoked_reason(token_id: str) -> str:
    """What ``diagnose`` says of a genuine token that is revoked (or whose ancestor is)."""
    return f"token {token_id} or an ancestor is revoked"


@final
class Token:
    """A signed token: its raw bytes and the claims it was minted with.

    Returned by :class:`TokenAuthority`; ``str(token)`` is the ``ctk1.`` text form.
    """

    __slots__ = ("claims", "raw")

    def __init__(self, raw: bytes, claims: TokenClaims) -> None:
        self.raw = raw
        self.claims = claims

    @property
    def text(self) -> str:
        return encode_text(self.raw)

    @property
    def token_id(self) -> str:
        return self.claims.token_id

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        caps = ", ".join(str(c) for c in self.claims.caps)
        return f"<Token {self.token_id[:12]} aud={self.claims.aud} caps=[{caps}]>"


def _raw(token: Token | str | bytes) -> bytes | None:
    if isinstance(token, Token):
        return token.raw
    if isinstance(token, str):
        return decode_text(token)
    return bytes(token)


@functools.lru_cache(maxsize=1024)
def _in_vocabulary(caps: tuple[Capability, ...]) -> bool:
    """Whether every capability is valid and canonical, memoised by value: a feature's
    tokens hold the same few capability sets over and over (only signed ones get here)."""
    try:
        for cap in caps:
            cap.validate()
    except ConfigError:
        return False
    return True


def _claims_problem(claims: TokenClaims, epoch: int) -> str | None:
    """Structural checks on a decoded body; the reason, or None when it is well formed."""
    if claims.epoch != epoch:
        return "body epoch differs from header epoch"
    if len(claims.jti) != JTI_SIZE:
        return "token id has the wrong size"
    if not _AUDIENCE.fullmatch(claims.aud):
        return "audience is not a feature name"
    if not 1 <= len(claims.caps) <= MAX_CAPABILITIES:
        return "capability count out of range"
    chain = claims.chain
    if chain and (len(chain) > MAX_CHAIN or any(len(j) != JTI_SIZE for j in chain)):
        return "derivation chain malformed"
    isfinite = math.isfinite
    if not (isfinite(claims.iat) and isfinite(claims.nbf) and isfinite(claims.exp)):
        return "validity times are not finite"
    if not claims.nbf <= claims.exp:
        return "validity window is empty"
    if not _in_vocabulary(claims.caps):
        return "capability outside the vocabulary"
    return None


def inspect_token(token: Token | str | bytes) -> TokenClaims:
    """Decode a token's claims WITHOUT verifying it: for display only, never for decisions."""
    raw = _raw(token)
    parts = split(raw) if raw is not None else None
    if parts is None or parts.version != VERSION:
        raise InvalidTokenError
    try:
        claims = decode_claims(parts.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidTokenError from None
    if _claims_problem(claims, parts.epoch) is not None:
        raise InvalidTokenError
    return claims


@final
class TokenVerifier:
    """Verifies tokens with public keys and a revocation list. Holds no secret."""

    __slots__ = ("_clock", "_keys", "revocations")

    def __init__(
        self,
        keys: PublicKeyRing,
        revocations: RevocationList | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self.revocations = revocations if revocations is not None else RevocationList()
        self._clock = clock

    @property
    def epoch(self) -> int:
        return self._keys.epoch

    def _replace_keys(self, keys: PublicKeyRing) -> None:
        self._keys = keys

    def diagnose(
        self, token: Token | str | bytes, *, aud: str | None = None, now: float | None = None
    ) -> tuple[TokenClaims | None, str | None]:
        """(claims, None) for a valid token, else (None, reason). For operators and logs."""
        raw = _raw(token)
        if raw is None:
            return None, "not a ctk1 token text"
        parts = split(raw)
        if parts is None:
            return None, "token size out of range"
        if parts.version != VERSION:
            return None, f"unknown format version {parts.version}"
        if parts.epoch != self._keys.epoch:
            return None, f"key epoch {parts.epoch} is not the current epoch {self._keys.epoch}"
        if not self._keys.check(parts.epoch, parts.signature, parts.signed):
            return None, "bad signature"
        try:
            claims = decode_claims(parts.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return None, f"signed body does not decode: {exc}"
        problem = _claims_problem(claims, parts.epoch)
        if problem is not None:
            return None, problem
        when = self._clock() if now is None else now
        if not math.isfinite(when):
            return None, "verification time is not finite"
        if when < claims.nbf:
            return None, f"token {claims.token_id} not valid before {claims.nbf:.3f}"
        if when >= claims.exp:
            return None, f"token {claims.token_id} expired at {claims.exp:.3f}"
        if aud is not None and claims.aud != aud:
            return None, f"token {claims.token_id} is for {claims.aud!r}, presented as {aud!r}"
        if self.revocations.any_revoked(claims.jti, claims.chain):
            return None, revoked_reason(claims.token_id)
        return claims, None

    def verify_at_time(
        self, token: Token | str | bytes, *, now: float, aud: str | None = None
    ) -> TokenClaims:
        """Verify as of Unix time ``now``; raise InvalidTokenError on any failure."""
        claims, reason = self.diagnose(token, aud=aud, now=now)
        if claims is None:
            _log.warning("token refused", reason=reason, audience=aud)
            raise InvalidTokenError
        return claims

    def verify(self, token: Token | str | bytes, *, aud: str | None = None) -> TokenClaims:
        """Verify now; raise InvalidTokenError on any failure."""
        return self.verify_at_time(token, now=self._clock(), aud=aud)


@final
class TokenAuthority:
    """The supervisor's token authority: holds the signing key, mints and revokes."""

    __slots__ = ("_clock", "_keyring", "_verifier")

    def __init__(
        self,
        keyring: KeyRing,
        *,
        revocations: RevocationList | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._verifier = TokenVerifier(keyring.public, revocations, clock=clock)

    @property
    def verifier(self) -> TokenVerifier:
        """A verifier sharing this authority's public key and revocations (no secret)."""
        return self._verifier

    @property
    def revocations(self) -> RevocationList:
        return self._verifier.revocations

    @property
    def epoch(self) -> int:
        return self._keyring.epoch

    def rotate(self) -> int:
        """Replace the key with a new epoch; every token minted before is refused."""
        self._keyring = self._keyring.rotated()
        self._verifier._replace_keys(self._keyring.public)
        return self._keyring.epoch

    def _sign(self, claims: TokenClaims) -> Token:
        head = header(claims.epoch)
        body = encode_claims(claims)
        size = len(head) + SIGNATURE_SIZE + len(body)
        if size > MAX_TOKEN_SIZE:
            raise ConfigError(
                f"the token would be {size} bytes, over the {MAX_TOKEN_SIZE}-byte limit: "
                "use fewer or shorter capabilities"
            )
        signature = self._keyring.sign(DOMAIN + head + body)
        return Token(head + signature + body, claims)

    def mint(
        self,
        aud: str,
        caps: Iterable[Capability | str],
        *,
        ttl: float = DEFAULT_TTL,
        not_before: float | None = None,
        now: float | None = None,
    ) -> Token:
        """A new root token for feature ``aud`` holding ``caps``, valid for ``ttl`` seconds."""
        when = self._clock() if now is None else now
        parsed = _parse_all(caps)
        _check_audience(aud)
        _check_ttl(ttl)
        claims = TokenClaims(
            jti=os.urandom(JTI_SIZE),
            aud=aud,
            iat=when,
            nbf=when if not_before is None else not_before,
            exp=when + ttl,
            epoch=self._keyring.epoch,
            caps=parsed,
        )
        return self._sign(claims)

    def attenuate(
        self,
        parent: Token | str | bytes,
        caps: Iterable[Capability | str] | None = None,
        *,
        holder: str | None = None,
        aud: str | None = None,
        ttl: float | None = None,
        now: float | None = None,
    ) -> Token:
        """Derive a narrower token from a valid ``parent``.

        Each capability must be covered by ONE of the parent's capabilities (limits
        not given are inherited); the expiry is never later than the parent's.
        ``holder``, when given, must be the parent's audience (the delegating feature).
        Raises InvalidTokenError for a bad parent, CapabilityDeniedError for widening.
        """
        when = self._clock() if now is None else now
        base = self._verifier.verify_at_time(parent, now=when, aud=holder)
        wanted = base.caps if caps is None else _parse_all(caps)
        derived: list[Capability] = []
        for cap in wanted:
            found = cover(cap, base.caps)
            if found is None:
                raise CapabilityDeniedError(
                    str(cap), base.aud, f"not covered by any capability of token {base.token_id}"
                )
            derived.append(found[1])
        if len(base.chain) >= MAX_CHAIN:
            raise ConfigError(f"token {base.token_id} is already {MAX_CHAIN} derivations deep")
        audience = base.aud if aud is None else aud
        _check_audience(audience)
        if ttl is not None:
            _check_ttl(ttl)
        exp = base.exp if ttl is None else min(base.exp, when + ttl)
        claims = TokenClaims(
            jti=os.urandom(JTI_SIZE),
            aud=audience,
            iat=when,
            nbf=max(when, base.nbf),
            exp=exp,
            epoch=self._keyring.epoch,
            caps=tuple(derived),
            chain=(*base.chain, base.jti),
        )
        self.revocations.record_derivation(base.jti, claims.jti, claims.exp, when)
        return self._sign(claims)

    def renew(self, token: Token | str | bytes, *, ttl: float, now: float | None = None) -> Token:
        """A successor of a valid root ``token``: the same audience and capabilities under a
        new id, valid for ``ttl`` seconds from now.

        Revoking ``token`` (or anything it renews) revokes the successor too; the caller
        retires ``token`` with :meth:`retire` once the successor has taken its place.
        Raises InvalidTokenError for a token that is expired, revoked or not valid, and
        ConfigError for a delegated one (it is renewed by delegating again).
        """
        when = self._clock() if now is None else now
        base = self._verifier.verify_at_time(token, now=when)
        if base.chain:
            raise ConfigError(f"token {base.token_id} is delegated: only root tokens are renewed")
        _check_ttl(ttl)
        claims = TokenClaims(
            jti=os.urandom(JTI_SIZE),
            aud=base.aud,
            iat=when,
            nbf=when,
            exp=when + ttl,
            epoch=self._keyring.epoch,
            caps=base.caps,
        )
        renewed = self._sign(claims)
        self.revocations.record_renewal(base.jti, claims.jti, claims.exp, when)
        return renewed

    def retire(self, token: Token | TokenClaims) -> None:
        """Refuse ``token`` from now on, leaving its renewals valid (see :meth:`renew`)."""
        claims = token.claims if isinstance(token, Token) else token
        self.revocations.retire(claims.jti)

    def revoke(self, token: Token | str | bytes | TokenClaims) -> frozenset[str]:
        """Revoke a token (by token, text, claims or 32-hex id) and all derived from it.

        Returns the ids newly revoked. The token need not be valid any more.
        """
        if isinstance(token, TokenClaims):
            jti = token.jti
        elif isinstance(token, str) and re.fullmatch(r"[0-9a-f]{32}", token):
            jti = bytes.fromhex(token)
        else:
            jti = inspect_token(token).jti
        revoked = self.revocations.revoke(jti)
        _log.info("token revoked", token_id=jti.hex(), revoked=len(revoked))
        return frozenset(j.hex() for j in revoked)

    def verify(self, token: Token | str | bytes, *, aud: str | None = None) -> TokenClaims:
        return self._verifier.verify(token, aud=aud)

    def verify_at_time(
        self, token: Token | str | bytes, *, now: float, aud: str | None = None
    ) -> TokenClaims:
        return self._verifier.verify_at_time(token, now=now, aud=aud)


def _parse_all(caps: Iterable[Capability | str]) -> tuple[Capability, ...]:
    parsed = tuple(parse_capability(c) if isinstance(c, str) else c.validate() for c in caps)
    if not 1 <= len(parsed) <= MAX_CAPABILITIES:
        raise ConfigError(
            f"a token holds 1 to {MAX_CAPABILITIES} capabilities, found {len(parsed)}"
        )
    return parsed


def _check_audience(aud: str) -> None:
    if len(aud) > MAX_AUDIENCE_LENGTH or not _AUDIENCE.fullmatch(aud):
        raise ConfigError(f"audience must be a feature name ([a-z][a-z0-9-]*), found {aud!r}")


def _check_ttl(ttl: float) -> None:
    if not 0 < ttl <= MAX_TTL:
        raise ConfigError(f"ttl must be more than 0 and at most 366 days, found {ttl}s")
