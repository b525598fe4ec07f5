"""Compiled grants: a verified token turned into the cheap per-message check.

Must not verify signatures or touch keys: it runs on every message, after admission.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TypeAlias, final

from capsule._tokens._caps import Action, Capability
from capsule._tokens._format import TokenClaims

__all__ = ["Grant", "compile_grant"]

#: a grant's index: the targets allowed exactly, and the stems allowed as prefixes, by action
_Index: TypeAlias = tuple[Mapping[Action, frozenset[str]], Mapping[Action, tuple[str, ...]]]


@functools.lru_cache(maxsize=1024)
def _index(capabilities: tuple[Capability, ...]) -> _Index:
    """The index of ``capabilities``, memoised by value: a feature's tokens (renewed, or one
    per container) hold the same few capability sets over and over. Grants of equal
    capabilities share one index, so it is never changed once built."""
    exact: dict[Action, set[str]] = {}
    prefixes: dict[Action, list[str]] = {}
    for cap in capabilities:
        for action in cap.action_set():
            target = cap.target
            if cap.kind == "icc" and target.endswith(".*"):
                prefixes.setdefault(action, []).append(target[:-1])
            elif cap.kind == "fs" and target.endswith("/"):
                prefixes.setdefault(action, []).append(target)
            else:
                exact.setdefault(action, set()).add(target)
    return (
        {a: frozenset(t) for a, t in exact.items()},
        {a: tuple(p) for a, p in prefixes.items()},
    )


@final
class Grant:
    """What one admitted token allows, indexed by action for an O(1)-ish check.

    ``alive`` is cleared on revocation; ``allows`` checks alive, expiry and scope
    on every call and formats nothing.
    """

    __slots__ = ("_exact", "_prefixes", "alive", "capabilities", "expires", "feature", "token_id")

    def __init__(
        self,
        token_id: str,
        feature: str,
        expires: float,
        capabilities: tuple[Capability, ...],
    ) -> None:
        self.token_id = token_id
        self.feature = feature
        self.expires = expires
        self.capabilities = capabilities
        self.alive = True
        self._exact, self._prefixes = _index(capabilities)

    def allows(self, action: Action, target: str, now: float) -> bool:
        """True when this grant is alive, unexpired at ``now`` and covers ``action`` on ``target``.

        ``target`` must already be in canonical form (the broker and fusefs normalise
        names and paths before asking).
        """
        if not self.alive or now >= self.expires:
            return False
        exact = self._exact.get(action)
        if exact is not None and target in exact:
            return True
        prefixes = self._prefixes.get(action)
        if prefixes is None:
            return False
        for stem in prefixes:
            if target.startswith(stem):
                if len(target) > len(stem) or stem[-1] == "/":
                    return True  # "a." needs a name after it; "/a/" is the directory itself
            elif stem[-1] == "/" and target + "/" == stem:
                return True  # the directory a subtree grant is rooted at
        return False

    def revoke(self) -> None:
        self.alive = False

    def renew(self, token_id: str, expires: float) -> None:
        """The same capabilities under a renewed token: whoever holds this grant (handles,
        subscriptions) follows it at once."""
        self.token_id = token_id
        self.expires = expires


def compile_grant(claims: TokenClaims) -> Grant:
    """Compile verified claims into a Grant (admission's second half)."""
    return Grant(claims.token_id, claims.aud, claims.exp, claims.caps)
