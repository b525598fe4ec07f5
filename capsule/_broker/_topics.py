"""Names and topic patterns: what the broker accepts as a feature, service or topic, and
which subscriptions an event reaches.

Pure matching: no I/O, no authorization (grants decide who may subscribe or publish).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Generic, TypeVar, final

__all__ = ["TopicIndex", "valid_call", "valid_pattern", "valid_topic"]

T = TypeVar("T")

_FEATURE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}(?:\.[a-z0-9][a-z0-9_-]{0,62}){0,15}")
_PATTERN: Final = re.compile(
    r"[a-z0-9][a-z0-9_-]{0,62}(?:\.[a-z0-9][a-z0-9_-]{0,62}){0,15}(?:\.\*)?"
)
_CACHE: Final = 4096

_seen_calls: set[str] = set()  # "feature\0service" keys: never looked up as topics
_seen_topics: set[str] = set()


def _remember(seen: set[str], text: str, *, ok: bool) -> bool:
    if ok:
        if len(seen) >= _CACHE:
            seen.clear()
        seen.add(text)
    return ok


def valid_call(feature: str, service: str) -> bool:
    """A concrete ``feature.service``: ASCII lower-case names, no wildcard, no look-alikes."""
    key = feature + "\x00" + service
    if key in _seen_calls:
        return True
    ok = bool(_FEATURE.fullmatch(feature) and _NAME.fullmatch(service))
    return _remember(_seen_calls, key, ok=ok)


def valid_topic(topic: str) -> bool:
    """A concrete topic one may publish on (no ``*``)."""
    if topic in _seen_topics:
        return True
    return _remember(_seen_topics, topic, ok=bool(_NAME.fullmatch(topic)))


def valid_pattern(pattern: str) -> bool:
    """A subscription pattern: a topic, or a topic prefix ending in ``.*``."""
    return bool(_PATTERN.fullmatch(pattern))


def matches(pattern: str, topic: str) -> bool:
    """``spell.*`` matches ``spell.checked`` and ``spell.a.b``; anything else must be equal."""
    if pattern.endswith(".*"):
        stem = pattern[:-1]
        return topic.startswith(stem) and len(topic) > len(stem)
    return pattern == topic


@final
class TopicIndex(Generic[T]):
    """Subscriptions by pattern, with a per-topic cache of who an event reaches."""

    def __init__(self) -> None:
        self._subs: dict[str, list[T]] = {}
        self._cache: dict[str, tuple[T, ...]] = {}

    def add(self, pattern: str, sub: T) -> None:
        self._subs.setdefault(pattern, []).append(sub)
        self._cache.clear()

    def remove(self, pattern: str, sub: T) -> None:
        subs = self._subs.get(pattern)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[pattern]
            self._cache.clear()

    def remove_where(self, doomed: Callable[[T], bool]) -> int:
        removed = 0
        for pattern in list(self._subs):
            kept = [s for s in self._subs[pattern] if not doomed(s)]
            removed += len(self._subs[pattern]) - len(kept)
            if kept:
                self._subs[pattern] = kept
            else:
                del self._subs[pattern]
        if removed:
            self._cache.clear()
        return removed

    def matching(self, topic: str) -> tuple[T, ...]:
        found = self._cache.get(topic)
        if found is None:
            found = tuple(
                sub
                for pattern, subs in self._subs.items()
                if matches(pattern, topic)
                for sub in subs
            )
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[topic] = found
        return found

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())
