"""The closed capability vocabulary: parsing, text form and the subset rule.

Pure capability algebra: no I/O, no cryptography, no clocks.

A capability is ``kind:action[,action...]:target[?limit=N&...]``::

    icc:call:dictionary.lookup      icc:call:dictionary.*
    icc:publish:spell.*             icc:subscribe:editor.changed
    fs:read:/data/words/            fs:read,write:/state/?bytes=1048576
    net:connect:127.0.0.1:8080      net:connect:[::1]:8080

Names are ASCII only and matched exactly after parsing (no case folding, no
Unicode: look-alike names cannot be written at all). ``*`` is allowed only as
the whole last segment of an ICC name and matches one or more segments. A
file-system target that ends in ``/`` is a directory subtree; one that does not
is a single file.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal, TypeAlias, final

import msgspec

from capsule.errors import ConfigError

__all__ = [
    "ACTIONS",
    "LIMITS",
    "MAX_TARGET_LENGTH",
    "Action",
    "Capability",
    "Kind",
    "cover",
    "covering",
    "format_actions",
    "is_subset",
    "narrowed",
    "net_target",
    "parse_capability",
    "target_covers",
]

Kind = Literal["icc", "fs", "net"]

MAX_TARGET_LENGTH: Final = 256
MAX_LIMIT_VALUE: Final = 2**62

#: action name -> bit, per kind. Closed: nothing outside this table parses.
ACTIONS: Final[dict[str, dict[str, int]]] = {
    "icc": {"call": 1, "publish": 2, "subscribe": 4},
    "fs": {"read": 1, "write": 2},
    "net": {"connect": 1, "listen": 2},
}

#: numeric limits each kind may carry (a derived capability may only lower them).
LIMITS: Final[dict[str, tuple[str, ...]]] = {
    "icc": ("rate",),  # messages per second
    "fs": ("bytes", "inodes"),  # quota on writable trees
    "net": ("conns",),  # concurrent connections
}


class Action(enum.IntEnum):
    """One (kind, action) pair, as the broker and grants key their checks."""

    ICC_CALL = 0x11
    ICC_PUBLISH = 0x12
    ICC_SUBSCRIBE = 0x14
    FS_READ = 0x21
    FS_WRITE = 0x22
    NET_CONNECT = 0x31
    NET_LISTEN = 0x32

    @property
    def kind(self) -> Kind:
        return _KIND_OF_NIBBLE[self.value >> 4]

    @property
    def bit(self) -> int:
        return self.value & 0x0F


_KIND_OF_NIBBLE: Final[dict[int, Kind]] = {1: "icc", 2: "fs", 3: "net"}
_NIBBLE_OF_KIND: Final[dict[str, int]] = {"icc": 1, "fs": 2, "net": 3}

#: (kind, action bits) -> the Action members, precomputed for grant compilation
_ACTION_SETS: Final[dict[tuple[str, int], frozenset[Action]]] = {
    (kind, bits): frozenset(
        Action((_NIBBLE_OF_KIND[kind] << 4) | bit) for bit in table.values() if bits & bit
    )
    for kind, table in ACTIONS.items()
    for bits in range(1, 1 << len(table))
}

_Fail: TypeAlias = Callable[[str], ConfigError]

_FEATURE = r"[a-z][a-z0-9-]{0,62}"
_SEGMENT = r"[a-z0-9][a-z0-9_-]{0,62}"
_ICC_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*(?:\.\*)?")
_CALL_TARGET = re.compile(rf"{_FEATURE}\.(?:{_SEGMENT}(?:\.{_SEGMENT})*(?:\.\*)?|\*)")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


@final
class Capability(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One capability: a kind, a set of action bits, a target and numeric limits.

    Build it with :func:`parse_capability`; ``str(cap)`` is the canonical text form.
    """

    kind: Kind
    actions: int
    target: str
    limits: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        text = f"{self.kind}:{format_actions(self.kind, self.actions)}:{self.target}"
        if self.limits:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.limits)
        return text

    def action_set(self) -> frozenset[Action]:
        """The individual (kind, action) pairs this capability allows."""
        return _ACTION_SETS.get((self.kind, self.actions), frozenset())

    def limit(self, name: str) -> int | None:
        for key, value in self.limits:
            if key == name:
                return value
        return None

    def validate(self) -> Capability:
        """Check a capability built from decoded data; return it or raise ConfigError."""
        if not _is_canonical(self):
            canonical = parse_capability(str(self))  # raises, naming what is wrong
            if canonical != self:
                raise ConfigError(f"capability {self} is not in canonical form")
        return self


@functools.lru_cache(maxsize=4096)
def _is_canonical(cap: Capability) -> bool:
    """Memoised by value: admission sees the same few capabilities over and over."""
    try:
        return parse_capability(str(cap)) == cap
    except ConfigError:
        return False


def format_actions(kind: str, actions: int) -> str:
    names = [name for name, bit in ACTIONS[kind].items() if actions & bit]
    return ",".join(names)


def parse_capability(text: str, *, where: str | None = None, key: str | None = None) -> Capability:
    """Parse the text form; raise ConfigError naming what was wrong and what is valid."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"capability {text!r}: {message}", path=where, key=key)

    if len(text) > MAX_TARGET_LENGTH + 64:
        raise fail(f"longer than {MAX_TARGET_LENGTH + 64} characters")
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise fail("expected kind:action:target, e.g. icc:call:dictionary.lookup")
    kind, action_text, rest = parts
    if kind not in ACTIONS:
        raise fail(f"unknown kind {kind!r}; valid kinds: icc, fs, net")
    actions = 0
    for name in action_text.split(","):
        bit = ACTIONS[kind].get(name)
        if bit is None:
            valid = ", ".join(ACTIONS[kind])
            raise fail(f"unknown {kind} action {name!r}; valid: {valid}")
        if actions & bit:
            raise fail(f"action {name!r} given twice")
        actions |= bit
    target, _, limit_text = rest.partition("?")
    limits = _parse_limits(kind, limit_text, fail) if limit_text else ()
    if kind == "icc":
        target = _check_icc_target(actions, target, fail)
    elif kind == "fs":
        target = _check_fs_target(target, fail)
    else:
        target = _check_net_target(target, fail)
    return Capability(kind=kind, actions=actions, target=target, limits=limits)  # type: ignore[arg-type]


def _parse_limits(kind: str, text: str, fail: _Fail) -> tuple[tuple[str, int], ...]:
    found: dict[str, int] = {}
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or name not in LIMITS[kind]:
            valid = ", ".join(f"{n}=N" for n in LIMITS[kind])
            raise fail(f"unknown limit {item!r}; valid for {kind}: {valid}")
        if name in found:
            raise fail(f"limit {name!r} given twice")
        if not value.isascii() or not value.isdigit() or int(value) > MAX_LIMIT_VALUE:
            raise fail(f"limit {name} must be a whole number from 0 to 2**62, found {value!r}")
        found[name] = int(value)
    return tuple((name, found[name]) for name in LIMITS[kind] if name in found)


def _check_icc_target(actions: int, target: str, fail: _Fail) -> str:
    if not target.isascii():
        raise fail("names are ASCII only (look-alike Unicode names are refused)")
    calls = actions & ACTIONS["icc"]["call"]
    if calls and actions != calls:
        raise fail("call targets are services and publish/subscribe targets are topics: split them")
    if calls:
        if not _CALL_TARGET.fullmatch(target):
            raise fail(
                "call target must be feature.service or feature.* "
                "(lower-case letters, digits, '-' and '_'), e.g. dictionary.lookup"
            )
    elif not _ICC_NAME.fullmatch(target):
        raise fail(
            "topic must be dot-separated lower-case segments, optionally ending in '.*', "
            "e.g. spell.checked or spell.*"
        )
    return target


def _check_fs_target(target: str, fail: _Fail) -> str:
    if not target.startswith("/"):
        raise fail("file-system path must be absolute, e.g. /data/words/")
    if len(target) > MAX_TARGET_LENGTH:
        raise fail(f"path longer than {MAX_TARGET_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in target) or "\\" in target:
        raise fail("path contains a control character or a backslash")
    if unicodedata.normalize("NFC", target) != target:
        raise fail("path is not in Unicode NFC form")
    segments = target[1:].split("/")
    inner = segments[:-1] if target.endswith("/") else segments
    if target != "/" and any(seg in ("", ".", "..") for seg in inner):
        raise fail("path must not contain '..', '.' or empty segments")
    return target


def _check_net_target(target: str, fail: _Fail) -> str:
    host, sep, port = target.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535:
        raise fail("net target must be host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            addr6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise fail(f"{host} is not an IPv6 address") from None
        if addr6.ipv4_mapped is not None:
            raise fail(f"write the IPv4-mapped address {addr6} as {addr6.ipv4_mapped}")
        return f"[{addr6.compressed}]:{port}"
    if not host.isascii():
        raise fail("host names are ASCII only (use the IDNA 'xn--' form)")
    if host and all(ch.isdigit() or ch == "." for ch in host):
        try:
            addr4 = ipaddress.IPv4Address(host)  # strict: no octal, hex or decimal spellings
        except ValueError:
            raise fail(f"{host!r} is not a dotted-quad IPv4 address") from None
        return f"{addr4}:{port}"
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(lab) for lab in labels):
        raise fail(f"{host!r} is not a valid host name or IP address")
    if labels[-1].isdigit():
        raise fail(f"{host!r} looks like a numeric address but is not a dotted quad")
    return f"{name}:{port}"


def net_target(host: str, port: int) -> str:
    """The canonical target a connection to (``host``, ``port``) is granted by, e.g.
    ``example.org:443``, ``127.0.0.1:80`` or ``[::1]:80``.

    Applies the rules of a capability's net target: names are lower-cased (and lose a
    trailing dot), IPv6 literals are compressed (brackets optional), and every other
    spelling of an address is refused with ConfigError: decimal, octal, hex or short IPv4
    forms, IPv4-mapped IPv6 addresses, zone ids, and anything but ASCII.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port {port!r}: expected a whole number from 1 to 65535")
    if not isinstance(host, str) or not host or "?" in host or "%" in host:
        raise ConfigError(f"host {host!r}: expected a host name or an IP address")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"

    def fail(message: str) -> ConfigError:
        return ConfigError(f"host {host!r}: {message}")

    return _check_net_target(f"{host}:{port}", fail)


def _name_covers(pattern: str, name: str) -> bool:
    """ICC name matching: equal, or ``a.*`` covering any longer name (or pattern) under ``a.``."""
    if pattern == name:
        return True
    if pattern.endswith(".*"):
        stem = pattern[:-1]  # keeps the dot: "a."
        return name.startswith(stem) and len(name) > len(stem)
    return False


def _path_covers(parent: str, child: str) -> bool:
    if parent.endswith("/"):
        return child.startswith(parent) or child + "/" == parent
    return child == parent


def target_covers(kind: str, parent: str, child: str) -> bool:
    if kind == "icc":
        return _name_covers(parent, child)
    if kind == "fs":
        return _path_covers(parent, child)
    return parent == child


def is_subset(child: Capability, parent: Capability) -> bool:
    """True when ``child`` allows nothing that ``parent`` does not (the attenuation rule)."""
    if child.kind != parent.kind or child.actions & ~parent.actions or not child.actions:
        return False
    if not target_covers(child.kind, parent.target, child.target):
        return False
    for name, ceiling in parent.limits:
        value = child.limit(name)
        if value is None or value > ceiling:
            return False
    return True


def covering(child: Capability, parents: Iterable[Capability]) -> Capability | None:
    """The first capability in ``parents`` that covers ``child`` on its own, if any.

    Each derived capability must be covered by one parent: two narrow grants are
    never combined into a wider one.
    """
    for parent in parents:
        if is_subset(child, parent):
            return parent
    return None


def cover(child: Capability, parents: Sequence[Capability]) -> tuple[int, Capability] | None:
    """Attenuate ``child`` under ``parents``: the index of the first parent that covers it
    alone once it inherits that parent's unset limits, and the child so narrowed.

    Token attenuation and the app policy's approval of requests both use this rule.
    """
    for index, parent in enumerate(parents):
        candidate = narrowed(child, parent)
        if is_subset(candidate, parent):
            return index, candidate
    return None


def narrowed(child: Capability, parent: Capability) -> Capability:
    """``child`` with any limit it leaves unset inherited from ``parent``."""
    have = dict(child.limits)
    for name, value in parent.limits:
        have.setdefault(name, value)  # explicit limits stay as asked: a wider one is refused
    ordered = tuple((n, have[n]) for n in LIMITS[child.kind] if n in have)
    return Capability(kind=child.kind, actions=child.actions, target=child.target, limits=ordered)
