"""Sizes, durations and back-off ranges: parsing, canonical text and their round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule._units import (
    MAX_DURATION,
    MAX_SIZE,
    format_duration,
    format_size,
    parse_backoff,
    parse_duration,
    parse_size,
)
from capsule.errors import ConfigError

MiB = 1 << 20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("0B", 0),
        ("512B", 512),
        ("64KiB", 64 << 10),
        ("128MiB", 128 * MiB),
        ("2GiB", 2 << 30),
    ],
)
def test_parse_size_accepts_bytes_and_iec_units(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("128MB", 'write "128MiB"'),
        ("1kB", 'write "1KiB"'),
        ("1.5GiB", '"1.5GiB"'),
        ("128 MiB", '"128 MiB"'),
        ("MiB", '"MiB"'),
        ("012MiB", '"012MiB"'),
        ("1TiB", '"1TiB"'),
        (-1, "from 0 to 2**62"),
        (True, "bool True"),
        (1.5, "float 1.5"),
        ("8589934592GiB", "more than 2**62"),
    ],
)
def test_parse_size_names_the_valid_forms(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_size(value, key="limits.memory")
    assert fragment in caught.value.message
    assert 'e.g. "128MiB"' in caught.value.message
    assert caught.value.key == "limits.memory"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (1024, "1KiB"),
        (1536, "1536B"),
        (128 * MiB, "128MiB"),
        (3 << 30, "3GiB"),
    ],
)
def test_format_size_uses_the_largest_exact_unit(size: int, text: str) -> None:
    assert format_size(size) == text


def test_format_size_refuses_negative_sizes() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        format_size(-1)


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=0, max_value=1 << 31), st.sampled_from(["B", "KiB", "MiB", "GiB"]))
def test_size_text_round_trip(number: int, unit: str) -> None:
    size = parse_size(f"{number}{unit}")
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("100ms", 0.1),
        ("0.5ms", 0.0005),
        ("1.5s", 1.5),
        ("60s", 60.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.25h", 900.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("60", '"60"'),
        (60, 'write the unit: "60s"'),
        ("1d", '"1d"'),
        ("1.5.2s", '"1.5.2s"'),
        (" 1s", '" 1s"'),
        ("-1s", '"-1s"'),
        ("1S", '"1S"'),
        ("367d", '"367d"'),
        ("9000h", "longer than 366 days"),
    ],
)
def test_parse_duration_names_the_valid_forms(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, key="--ttl")
    assert fragment in caught.value.message
    assert "ms, s, m or h" in caught.value.message
    assert caught.value.key == "--ttl"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.1, "100ms"),
        (0.0005, "0.5ms"),
        (1.5, "1500ms"),
        (60.0, "1m"),
        (90, "90s"),
        (7200, "2h"),
    ],
)
def test_format_duration_uses_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_refuses_negative_and_nan() -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="non-negative"):
            format_duration(bad)


@given(st.integers(min_value=0, max_value=MAX_DURATION * 1000))
def test_duration_round_trip_in_milliseconds(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.integers(min_value=0, max_value=10**6),
    st.one_of(st.none(), st.from_regex(r"[0-9]{1,9}", fullmatch=True)),
    st.sampled_from(["ms", "s", "m", "h"]),
)
def test_duration_text_round_trip(whole: int, fraction: str | None, unit: str) -> None:
    text = f"{whole}.{fraction}{unit}" if fraction else f"{whole}{unit}"
    try:
        seconds = parse_duration(text)
    except ConfigError:
        assert whole >= MAX_DURATION // 3600  # only too-long values are refused
        return
    again = format_duration(seconds)
    assert parse_duration(again) == seconds
    assert format_duration(parse_duration(again)) == again


def test_parse_backoff() -> None:
    assert parse_backoff("100ms..5s") == (0.1, 5.0)
    assert parse_backoff("1s..1s") == (1.0, 1.0)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("5s..100ms", 'write the smaller first, e.g. "100ms..5s"'),
        ("0s..1s", "more than 0"),
        ("100ms", '"initial..maximum"'),
        ("1s..2s..3s", '"initial..maximum"'),
        ("1s..", '""'),
        (5, "int 5"),
    ],
)
def test_parse_backoff_errors(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_backoff(value, key="restart.backoff")
    assert fragment in caught.value.message
    assert caught.value.key == "restart.backoff"
