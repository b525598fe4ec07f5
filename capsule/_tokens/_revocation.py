"""Revocation: the set of revoked token ids, the derivation tree, and revocation files.

Must not verify signatures or decide validity: it answers "is any of these ids revoked".

Revoking a token revokes everything derived from it in two ways: the tree
below it (tokens this authority derived) is marked, and every token carries its
ancestors' ids in ``chain``, so a derived token minted elsewhere is refused too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, final

from capsule.errors import ConfigError

__all__ = ["RevocationList"]

_HEX_ID: Final = re.compile(r"[0-9a-f]{32}")
_MAX_FILE: Final = 16 * 1024 * 1024

Listener = Callable[[frozenset[bytes]], None]


@final
class RevocationList:
    """Revoked token ids plus the parent -> children derivation tree."""

    __slots__ = ("_children", "_expiry", "_listeners", "_recorded", "_revoked")

    def __init__(self, revoked: Iterable[bytes] = ()) -> None:
        self._revoked: set[bytes] = set(revoked)
        self._children: dict[bytes, set[bytes]] = {}
        self._expiry: dict[bytes, float] = {}  # derived token -> its exp, for pruning
        self._recorded = 0
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._revoked)

    def __contains__(self, jti: object) -> bool:
        return jti in self._revoked

    def record_derivation(self, parent: bytes, child: bytes, expires: float, now: float) -> None:
        """Remember that ``child`` (valid until ``expires``) was derived from ``parent``.

        Entries of expired tokens are pruned as new ones arrive, so a long-lived
        authority that delegates often keeps only what can still be presented.
        """
        self._children.setdefault(parent, set()).add(child)
        self._expiry[child] = expires
        self._recorded += 1
        if self._recorded >= max(1024, len(self._expiry)):
            self._recorded = 0
            self.prune(now)

    def record_renewal(self, old: bytes, new: bytes, expires: float, now: float) -> None:
        """Remember that ``new`` (valid until ``expires``) renews ``old``: revoking ``old``, or
        anything ``old`` derives from, revokes ``new`` too, even after ``old`` has expired."""
        self.record_derivation(old, new, expires, now)

    def retire(self, jti: bytes) -> None:
        """Refuse ``jti`` from now on without revoking what derives from it or renews it, and
        without telling listeners (its successor holds the same live handles)."""
        self._revoked.add(jti)

    def prune(self, now: float) -> int:
        """Forget derivations of tokens expired at ``now``; return how many were dropped.

        A derived token expires no later than its parent, except a renewal: an expired
        token whose renewals live on keeps its entry, linked straight to them, so revoking
        any id of a renewal chain still reaches its live end.
        """
        expired = {jti for jti, exp in self._expiry.items() if exp <= now}
        for jti in expired:
            del self._expiry[jti]
        children = self._children

        def live(jti: bytes, seen: set[bytes]) -> set[bytes]:
            found: set[bytes] = set()
            for kid in children.get(jti, ()):
                if kid not in expired:
                    found.add(kid)
                elif kid not in seen:
                    seen.add(kid)
                    found |= live(kid, seen)
            return found

        self._children = {}
        for parent in children:
            kids = live(parent, set())
            if kids:
                self._children[parent] = kids
        return len(expired)

    def derivations(self) -> int:
        """How many derived tokens are remembered (for statistics and tests)."""
        return len(self._expiry)

    def children(self, jti: bytes) -> frozenset[bytes]:
        return frozenset(self._children.get(jti, ()))

    def any_revoked(self, jti: bytes, chain: Iterable[bytes]) -> bool:
        revoked = self._revoked
        if jti in revoked:
            return True
        return any(ancestor in revoked for ancestor in chain)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(ids)`` synchronously on every revocation (live handles hook here)."""
        self._listeners.append(listener)

    def revoke(self, jti: bytes) -> frozenset[bytes]:
        """Revoke ``jti`` and every descendant recorded here; return all ids newly revoked.

        Listeners run before this returns, so no message is authorized after it.
        """
        newly: set[bytes] = set()
        stack = [jti]
        while stack:
            current = stack.pop()
            if current in newly:
                continue
            if current not in self._revoked:
                newly.add(current)
            stack.extend(self._children.get(current, ()))
        self._revoked.update(newly)
        result = frozenset(newly)
        if result:
            for listener in self._listeners:
                listener(result)
        return result

    # -- revocation files: one token id (32 hex digits) per line, '#' comments ---

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RevocationList:
        name = os.fspath(path)
        target = Path(name)
        if not target.exists():
            return cls()
        if target.stat().st_size > _MAX_FILE:
            raise ConfigError("revocation file is larger than 16 MiB", path=name)
        revoked: set[bytes] = set()
        for number, line in enumerate(target.read_text("utf-8").splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if not _HEX_ID.fullmatch(text):
                raise ConfigError(
                    f"expected a token id (32 lower-case hex digits), found {text!r}",
                    path=name,
                    line=number,
                )
            revoked.add(bytes.fromhex(text))
        return cls(revoked)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the revoked ids atomically, sorted, one per line."""
        target = Path(path)
        lines = ["# capsule revoked token ids", *sorted(jti.hex() for jti in self._revoked)]
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temp.write_text("\n".join(lines) + "\n", "utf-8")
        temp.replace(target)
