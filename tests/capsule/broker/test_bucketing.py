"""The bucketing of variants, pure: a key's variant never moves away from a variant whose
share rises, a split is kept within 1 % over 10,000 keys, and a payload field is a key."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule._broker._bucketing import (
    BUCKETS,
    KeyRule,
    first_split,
    new_salt,
    parse_sticky,
    ramp,
    shares_to_buckets,
)
from capsule.errors import ConfigError

_KEYS = [f"user-{i}".encode() for i in range(2_000)]


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(min_value=0, max_value=100),
    steps=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6),
    salt=st.binary(min_size=16, max_size=16),
)
def test_ramping_a_candidate_up_never_moves_a_key_away_from_it(
    start: int, steps: list[int], salt: bytes
) -> None:
    split = first_split({"1.2": 100 - start, "1.3": start}, salt)
    share = start
    for step in sorted(steps):  # any sequence of ramps upward
        before = {key: split.variant_of(key) for key in _KEYS}
        share = max(share, step)
        split = ramp(split, {"1.2": 100 - share, "1.3": share})
        for key, variant in before.items():
            if variant == 1:
                assert split.variant_of(key) == 1, key
            elif split.variant_of(key) == 0:
                assert variant == 0, key  # a key only ever moves towards the growing variant


@settings(max_examples=40, deadline=None)
@given(
    shares=st.lists(st.integers(min_value=0, max_value=50), min_size=3, max_size=3),
    grow=st.integers(min_value=0, max_value=2),
    salt=st.binary(min_size=16, max_size=16),
)
def test_with_three_variants_the_one_ramped_up_keeps_all_its_keys(
    shares: list[int], grow: int, salt: bytes
) -> None:
    names = ("a", "b", "c")
    first = dict(zip(names, shares, strict=True))
    first["a"] = 100 - first["b"] - first["c"]
    split = first_split(first, salt)
    before = {key: split.variant_of(key) for key in _KEYS}
    grown = names[grow]
    other = names[(grow + 1) % 3]  # gives its whole share to the grown one
    moved = first[other]
    after = {**first, grown: first[grown] + moved, other: 0}
    split = ramp(split, after)
    for key, variant in before.items():
        if variant == grow:
            assert split.variant_of(key) == grow


def test_the_split_holds_within_one_percent_over_10000_keys() -> None:
    split = first_split({"1.2": 90, "1.3": 10}, new_salt())
    keys = [f"caller-{i}".encode() for i in range(10_000)]
    candidate = sum(split.variant_of(k) for k in keys)
    assert abs(candidate / 10_000 - 0.10) <= 0.01, candidate
    split = ramp(split, {"1.2": 50, "1.3": 50})
    candidate = sum(split.variant_of(k) for k in keys)
    assert abs(candidate / 10_000 - 0.50) <= 0.01, candidate


def test_two_experiments_split_the_same_keys_differently() -> None:
    one = first_split({"a": 50, "b": 50}, new_salt())
    two = first_split({"a": 50, "b": 50}, new_salt())
    same = sum(one.variant_of(k) == two.variant_of(k) for k in _KEYS)
    assert 0.4 < same / len(_KEYS) < 0.6  # independent: about half agree by chance


def test_shares_are_percentages_adding_up_to_100() -> None:
    assert shares_to_buckets({"a": 33.33, "b": 66.67}) == {"a": 3333, "b": 6667}
    assert sum(shares_to_buckets({"a": 100 / 3, "b": 100 / 3, "c": 100 / 3}).values()) == BUCKETS
    with pytest.raises(ValueError, match="add up to 100"):
        shares_to_buckets({"a": 90, "b": 20})
    with pytest.raises(ValueError, match="'b' must be a percentage"):
        shares_to_buckets({"a": 90, "b": -10})


def test_a_payload_field_keys_the_call_and_its_absence_falls_back_to_the_caller() -> None:
    rule = parse_sticky("payload.user_id", "here")
    assert rule == KeyRule("user_id")
    with_field = msgspec.msgpack.encode({"text": "x" * 100, "user_id": 42})
    other_user = msgspec.msgpack.encode({"user_id": 43, "text": "y"})
    assert rule.key("editor", with_field, None) == msgspec.msgpack.encode(42)
    assert rule.key("editor", with_field, None) != rule.key("editor", other_user, None)
    assert rule.key("editor", msgspec.msgpack.encode({"text": "x"}), None) == b"editor"
    assert rule.key("editor", msgspec.msgpack.encode([1, 2]), None) == b"editor"
    assert rule.key("@host", with_field, "alice") == b"alice"  # the host's key wins


def test_a_bad_sticky_names_where_and_what_is_valid() -> None:
    with pytest.raises(ConfigError, match=r"variants of spellcheck: sticky must be 'caller'"):
        parse_sticky("payload.", "variants of spellcheck")
