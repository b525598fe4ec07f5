"""Names and topic patterns: what the broker accepts as a feature, service or topic, and
which subscriptions an event reaches (a trie over dot-separated segments).

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
class _Node(Generic[T]):
    """One segment of the trie: its children, and the subscriptions that end here."""

    __slots__ = ("children", "exact", "wild")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.exact: list[T] | None = None  # pattern "a.b": topic "a.b" only
        self.wild: list[T] | None = None  # pattern "a.b.*": topics below "a.b"


@final
class TopicIndex(Generic[T]):
    """Subscriptions in a trie of dot-separated segments, with a per-topic cache of who an
    event reaches: matching a topic costs its segments plus its subscribers, however many
    other subscriptions there are."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._subs: dict[str, list[T]] = {}  # pattern -> the list its trie node holds
        self._count = 0
        self._cache: dict[str, tuple[T, ...]] = {}

    def _path(self, pattern: str, *, create: bool) -> list[_Node[T]] | None:
        """The nodes from the root to ``pattern``'s stem (without ``.*``)."""
        stem = pattern[:-2] if pattern.endswith(".*") else pattern
        nodes = [self._root]
        for segment in stem.split("."):
            child = nodes[-1].children.get(segment)
            if child is None:
                if not create:
                    return None
                child = nodes[-1].children[segment] = _Node()
            nodes.append(child)
        return nodes

    def add(self, pattern: str, sub: T) -> None:
        subs = self._subs.get(pattern)
        if subs is None:
            nodes = self._path(pattern, create=True)
            assert nodes is not None  # noqa: S101 - created on the way
            subs = self._subs[pattern] = []
            if pattern.endswith(".*"):
                nodes[-1].wild = subs
            else:
                nodes[-1].exact = subs
        subs.append(sub)
        self._count += 1
        self._cache.clear()

    def remove(self, pattern: str, sub: T) -> None:
        subs = self._subs.get(pattern)
        if subs is not None and sub in subs:
            subs.remove(sub)
            self._count -= 1
            if not subs:
                self._forget(pattern)
            self._cache.clear()

    def _forget(self, pattern: str) -> None:
        """Drop ``pattern``'s empty list and prune the trie nodes nothing needs any more."""
        del self._subs[pattern]
        nodes = self._path(pattern, create=False)
        if nodes is None:
            return
        if pattern.endswith(".*"):
            nodes[-1].wild = None
        else:
            nodes[-1].exact = None
        stem = pattern[:-2] if pattern.endswith(".*") else pattern
        segments = stem.split(".")
        for depth in range(len(segments), 0, -1):
            node = nodes[depth]
            if node.children or node.exact is not None or node.wild is not None:
                break
            del nodes[depth - 1].children[segments[depth - 1]]

    def remove_where(self, doomed: Callable[[T], bool]) -> int:
        removed = 0
        for pattern in list(self._subs):
            subs = self._subs[pattern]
            kept = [s for s in subs if not doomed(s)]
            if len(kept) == len(subs):
                continue
            removed += len(subs) - len(kept)
            subs[:] = kept  # the trie node holds this very list
            if not kept:
                self._forget(pattern)
        if removed:
            self._count -= removed
            self._cache.clear()
        return removed

    def matching(self, topic: str) -> tuple[T, ...]:
        found = self._cache.get(topic)
        if found is None:
            found = self._walk(topic)
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[topic] = found
        return found

    def _walk(self, topic: str) -> tuple[T, ...]:
        reached: list[T] = []
        node = self._root
        for depth, segment in enumerate(topic.split(".")):
            if depth and node.wild is not None:  # "a.*" reaches "a.b", "a.b.c", ...
                reached.extend(node.wild)
            child = node.children.get(segment)
            if child is None:
                return tuple(reached)
            node = child
        if node.exact is not None:
            reached.extend(node.exact)
        return tuple(reached)

    def __len__(self) -> int:
        return self._count
