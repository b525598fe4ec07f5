"""Names and topic patterns as the broker reads them: exact ASCII, no look-alikes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule._broker._topics import TopicIndex, matches, valid_call, valid_pattern, valid_topic


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("spell.checked", "spell.checked", True),
        ("spell.*", "spell.checked", True),
        ("spell.*", "spell.a.b", True),
        ("spell.*", "spell", False),
        ("spell.*", "spell.", False),
        ("spell.*", "spellx.checked", False),
        ("spell.checked", "spell.checked.more", False),
    ],
)
def test_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(
    "name",
    [
        "Spell.checked",
        "spell.*",
        "spell..checked",
        "spell.checked.",
        "sp\u0435ll.checked",
        "a\x00b",
        "",
    ],
)
def test_topics_one_may_publish_on_are_concrete_ascii_names(name: str) -> None:
    assert not valid_topic(name)


def test_call_targets_are_a_feature_and_a_service() -> None:
    assert valid_call("dictionary", "lookup")
    assert valid_call("dictionary", "words.lookup")
    for feature, service in [
        ("dictionary", "*"),
        ("dicti\u043enary", "lookup"),  # Cyrillic o
        ("Dictionary", "lookup"),
        ("dictionary", "look up"),
        ("9dictionary", "lookup"),
        ("dictionary", ""),
    ]:
        assert not valid_call(feature, service), (feature, service)


def test_patterns_may_end_in_one_wildcard_only() -> None:
    assert valid_pattern("spell.*")
    assert valid_pattern("spell.checked")
    assert not valid_pattern("*")
    assert not valid_pattern("spell.*.x")
    assert not valid_pattern("spell.**")


def test_the_index_finds_subscribers_and_forgets_removed_ones() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("spell.*", "a")
    index.add("spell.checked", "b")
    index.add("editor.changed", "c")
    assert sorted(index.matching("spell.checked")) == ["a", "b"]
    index.remove("spell.*", "a")
    assert index.matching("spell.checked") == ("b",)
    assert index.remove_where(lambda sub: sub == "c") == 1
    assert index.matching("editor.changed") == ()
    assert len(index) == 1


_SEGMENT = st.sampled_from(["a", "b", "c"])
_TOPIC = st.lists(_SEGMENT, min_size=1, max_size=4).map(".".join)
_PATTERN = st.tuples(_TOPIC, st.booleans()).map(lambda p: p[0] + ".*" if p[1] else p[0])


@given(
    subs=st.lists(_PATTERN, max_size=12),
    removed=st.lists(st.integers(0, 11), max_size=6),
    topics=st.lists(_TOPIC, min_size=1, max_size=8),
)
def test_the_trie_reaches_exactly_the_subscriptions_a_pattern_matches(
    subs: list[str], removed: list[int], topics: list[str]
) -> None:
    index: TopicIndex[int] = TopicIndex()
    live = dict(enumerate(subs))
    for number, pattern in live.items():
        index.add(pattern, number)
    for number in removed:
        if number in live:
            index.remove(live.pop(number), number)
    index.remove_where(lambda number: number % 5 == 4)
    live = {n: p for n, p in live.items() if n % 5 != 4}
    assert len(index) == len(live)
    for topic in topics:
        expected = sorted(n for n, p in live.items() if matches(p, topic))
        assert sorted(index.matching(topic)) == expected
    for number, pattern in live.items():
        index.remove(pattern, number)
    assert len(index) == 0
    assert not index._root.children  # every node pruned
