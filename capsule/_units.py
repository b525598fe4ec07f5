"""Sizes and durations as written in manifests and options: parsing and canonical text.

Pure text conversion: no I/O, no clocks, no knowledge of which key a value belongs to
beyond the ``key`` it is told to name in its error.

Sizes are a whole number of bytes (an ``int``) or a string ``N`` + an IEC unit:
``512B``, ``64KiB``, ``128MiB``, ``2GiB``. Durations are ``N`` or ``N.N`` + one of
``ms``, ``s``, ``m``, ``h`` (``100ms``, ``1.5s``, ``60s``, ``2m``); they are returned in
seconds as a ``float``. A back-off range is ``initial..maximum`` (``100ms..5s``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from capsule.errors import ConfigError

__all__ = [
    "DURATION_UNITS",
    "MAX_SIZE",
    "SIZE_UNITS",
    "format_duration",
    "format_size",
    "parse_backoff",
    "parse_duration",
    "parse_size",
]

#: unit -> bytes, smallest first. IEC units only: "MB" is refused rather than guessed.
SIZE_UNITS: Final[dict[str, int]] = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
#: unit -> seconds, smallest first.
DURATION_UNITS: Final[dict[str, Decimal]] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
#: the largest size accepted (the ceiling of a capability limit).
MAX_SIZE: Final = 2**62
#: the longest duration accepted: one year.
MAX_DURATION: Final = 366 * 24 * 3600

_SIZE = re.compile(r"(0|[1-9][0-9]{0,18})([A-Za-z]+)")
_DURATION = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,9}))?([a-z]+)")
_SI_LOOKALIKES: Final = {"KB": "KiB", "kB": "KiB", "K": "KiB", "MB": "MiB", "M": "MiB"} | {
    "GB": "GiB",
    "G": "GiB",
    "b": "B",
    "kib": "KiB",
    "mib": "MiB",
    "gib": "GiB",
}
_SIZE_FORMS: Final = (
    'a whole number of bytes (e.g. 1048576) or "N" + B, KiB, MiB or GiB (e.g. "128MiB")'
)
_DURATION_FORMS: Final = '"N" or "N.N" + ms, s, m or h (e.g. "100ms", "1.5s", "60s", "2m")'


def _quoted(text: str) -> str:
    """``"text"``, as TOML writes a string (messages quote what the user wrote this way)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_size(value: object, *, key: str | None = None) -> int:
    """Bytes from an ``int`` or a string like ``"128MiB"``; ConfigError naming the valid forms."""

    def fail(found: str, hint: str = "") -> ConfigError:
        return ConfigError(f"expected {_SIZE_FORMS}, found {found}{hint}", key=key)

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise fail(f"{type(value).__name__} {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_SIZE:
            raise fail(f"{value} (must be from 0 to 2**62)")
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise fail(_quoted(value))
    number, unit = int(match.group(1)), match.group(2)
    factor = SIZE_UNITS.get(unit)
    if factor is None:
        better = _SI_LOOKALIKES.get(unit)
        hint = f'; sizes use IEC units: write "{number}{better}"' if better else ""
        raise fail(_quoted(value), hint)
    size = number * factor
    if size > MAX_SIZE:
        raise fail(f"{_quoted(value)} (more than 2**62 bytes)")
    return size


def format_size(size: int) -> str:
    """The shortest exact text for ``size`` bytes: ``134217728`` -> ``"128MiB"``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int, found {size!r}")
    for unit, factor in reversed(SIZE_UNITS.items()):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_duration(text: object, *, key: str | None = None) -> float:
    """Seconds from a string like ``"100ms"``, ``"1.5s"``, ``"60s"``, ``"2m"`` or ``"1h"``."""

    def fail(found: str) -> ConfigError:
        return ConfigError(f"expected a duration {_DURATION_FORMS}, found {found}", key=key)

    if not isinstance(text, str):
        found = f"{type(text).__name__} {text!r}"
        if isinstance(text, int | float) and not isinstance(text, bool):
            found += f' (write the unit: "{text}s")'
        raise fail(found)
    match = _DURATION.fullmatch(text)
    if match is None or match.group(3) not in DURATION_UNITS:
        raise fail(_quoted(text))
    whole, fraction, unit = match.groups()
    amount = Decimal(f"{whole}.{fraction or 0}") * DURATION_UNITS[unit]
    if amount > MAX_DURATION:
        raise fail(f"{_quoted(text)} (longer than 366 days)")
    return float(amount)


def format_duration(seconds: float) -> str:
    """The shortest exact text for ``seconds``: ``0.1`` -> ``"100ms"``, ``60.0`` -> ``"1m"``.

    ``parse_duration(format_duration(x)) == x`` for every ``x`` that parse_duration returns.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValueError(f"duration must be a non-negative number of seconds, found {seconds!r}")
    exact = Decimal(repr(float(seconds)))
    if exact == 0:
        return "0s"
    for unit in ("h", "m", "s", "ms"):
        amount = exact / DURATION_UNITS[unit]
        if amount == amount.to_integral_value():
            return f"{int(amount)}{unit}"
    return f"{format(exact * 1000, 'f').rstrip('0')}ms"


def parse_backoff(text: object, *, key: str | None = None) -> tuple[float, float]:
    """``(initial, maximum)`` seconds from ``"initial..maximum"``, e.g. ``"100ms..5s"``.

    Both must be more than zero (a delay that doubles from zero stays zero) and
    ``initial <= maximum``.
    """
    forms = f'"initial..maximum" with each a duration {_DURATION_FORMS}, e.g. "100ms..5s"'
    if not isinstance(text, str) or text.count("..") != 1:
        found = _quoted(text) if isinstance(text, str) else f"{type(text).__name__} {text!r}"
        raise ConfigError(f"expected {forms}, found {found}", key=key)
    first, _, last = text.partition("..")
    initial = parse_duration(first, key=key)
    maximum = parse_duration(last, key=key)
    if initial <= 0:
        raise ConfigError(
            f"back-off initial delay must be more than 0, found {_quoted(first)}", key=key
        )
    if initial > maximum:
        raise ConfigError(
            f"back-off initial delay {first} is longer than its maximum {last}: "
            f'write the smaller first, e.g. "{last}..{first}"',
            key=key,
        )
    return initial, maximum
