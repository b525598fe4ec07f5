"""Which variant of a feature a call goes to: a key hashed into one of 10,000 buckets, and
the table of which variant owns each bucket.

Pure decisions: no I/O, no clock, no containers. A table is built once per change of split
(:func:`first_split`, :func:`ramp`); each call then costs one keyed hash and one index.

The hash is BLAKE2b keyed with a salt drawn for each experiment. The key is not secret
(a feature's name, a user id), so the hash need not hide it; the salt keeps a caller from
choosing a key that lands in the bucket it wants, and keeps two experiments' splits
independent (the users in one experiment's 10 % are not the same as in the next one's).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, final

import msgspec

from capsule.errors import ConfigError

__all__ = [
    "BUCKETS",
    "KeyRule",
    "Split",
    "bucket_of",
    "first_split",
    "new_salt",
    "parse_sticky",
    "ramp",
    "shares_to_buckets",
]

BUCKETS: Final = 10_000
"""Buckets a key is hashed into: a share is set to 0.01 %."""
MAX_VARIANTS: Final = 8
_PAYLOAD: Final = "payload."


def new_salt() -> bytes:
    """A fresh salt for a new experiment (16 random bytes)."""
    return secrets.token_bytes(16)


def bucket_of(salt: bytes, key: bytes) -> int:
    """The bucket (0 to BUCKETS - 1) of ``key`` under ``salt``."""
    digest = hashlib.blake2b(key, key=salt, digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS  # 2**64 % 10,000: a bias of 1e-15


def shares_to_buckets(shares: Mapping[str, float]) -> dict[str, int]:
    """Percent shares (summing to 100) as bucket counts (summing to BUCKETS), the rounding
    left over given to the largest remainders. ValueError naming the share at fault."""
    if not shares:
        raise ValueError("a split needs at least one variant")
    if len(shares) > MAX_VARIANTS:
        raise ValueError(f"at most {MAX_VARIANTS} variants, found {len(shares)}")
    for name, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 100:
            raise ValueError(f"the share of {name!r} must be a percentage from 0 to 100: {share!r}")
    total = sum(shares.values())
    if abs(total - 100) > 1e-6:
        raise ValueError(f"the shares must add up to 100 (percent), found {total:g}")
    exact = {name: share * BUCKETS / 100 for name, share in shares.items()}
    counts = {name: int(value) for name, value in exact.items()}
    short = BUCKETS - sum(counts.values())
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[:short]:
        counts[name] += 1
    return counts


@final
@dataclass(frozen=True, slots=True)
class Split:
    """Which variant owns each bucket. ``names[i]`` is variant ``i``; ``owned[i]`` its
    buckets in the order it took them (it gives back the last taken first)."""

    salt: bytes
    names: tuple[str, ...]
    table: bytes  # table[bucket] = index of the variant that owns it
    owned: tuple[tuple[int, ...], ...]

    def variant_of(self, key: bytes) -> int:
        """The index of the variant ``key`` goes to."""
        return self.table[bucket_of(self.salt, key)]

    def shares(self) -> dict[str, float]:
        """Each variant's share, in percent."""
        pairs = zip(self.names, self.owned, strict=True)
        return {name: len(buckets) * 100 / BUCKETS for name, buckets in pairs}


def first_split(shares: Mapping[str, float], salt: bytes) -> Split:
    """The split of a new experiment: variants take buckets in the order ``shares`` names them."""
    return ramp(Split(salt, (), b"", ()), shares)


def ramp(split: Split, shares: Mapping[str, float]) -> Split:
    """``split`` changed to ``shares`` (a variant left out keeps share 0; a new one joins).

    A variant whose share does not fall keeps every bucket it owns: only variants whose share
    fell give buckets back (the last they took), and only variants whose share rose take
    them. So ramping a variant up never moves a key away from it."""
    counts = shares_to_buckets(shares)
    names = split.names + tuple(n for n in counts if n not in split.names)
    if len(names) > MAX_VARIANTS:
        raise ValueError(f"at most {MAX_VARIANTS} variants in one experiment")
    owned = [list(b) for b in split.owned] + [[] for _ in range(len(names) - len(split.owned))]
    taken = bytearray(split.table) if split.table else bytearray(b"\xff" * BUCKETS)
    for index, name in enumerate(names):
        want = counts.get(name, 0)
        while len(owned[index]) > want:
            taken[owned[index].pop()] = 0xFF
    free = (b for b in range(BUCKETS) if taken[b] == 0xFF)
    for index, name in enumerate(names):
        want = counts.get(name, 0)
        while len(owned[index]) < want:
            b = next(free)
            taken[b] = index
            owned[index].append(b)
    return Split(split.salt, names, bytes(taken), tuple(tuple(b) for b in owned))


@final
@dataclass(frozen=True, slots=True)
class KeyRule:
    """What a call is keyed by: ``caller`` (the calling feature; the host's calls by the key
    passed to ``sup.call(key=...)``, else ``@host``) or ``payload.FIELD`` (that field of a
    map payload; a call without it is keyed by its caller). A key the host passes wins."""

    field: str | None  # None: the caller

    @property
    def text(self) -> str:
        return "caller" if self.field is None else f"{_PAYLOAD}{self.field}"

    def key(self, caller: str, payload: bytes, host_key: str | None) -> bytes:
        """The key of one call."""
        if host_key is not None:
            return host_key.encode()
        if self.field is not None:
            value = _field_of(self.field, payload)
            if value is not None:
                return value
        return caller.encode()


def parse_sticky(text: str, where: str) -> KeyRule:
    """``caller`` or ``payload.FIELD``; ConfigError naming ``where`` otherwise."""
    if text == "caller":
        return KeyRule(None)
    if text.startswith(_PAYLOAD) and text[len(_PAYLOAD) :].isidentifier():
        return KeyRule(text[len(_PAYLOAD) :])
    raise ConfigError(
        f"{where}: sticky must be 'caller' or 'payload.FIELD' (a field of the call's map "
        f"payload, such as 'payload.user_id'), found {text!r}"
    )


_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}


def _field_of(field: str, payload: bytes) -> bytes | None:
    """The msgpack-encoded value of ``field`` of a map payload, or None (not a map, no such
    field, or not decodable). Only that field is decoded: the others are skipped."""
    decoder = _decoders.get(field)
    if decoder is None:
        struct = msgspec.defstruct("Keyed", [(field, msgspec.Raw, msgspec.Raw(b"\xc0"))])
        decoder = _decoders[field] = msgspec.msgpack.Decoder(struct)
    try:
        value: msgspec.Raw = getattr(decoder.decode(payload), field)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return None if bytes(value) == b"\xc0" else bytes(value)
