"""The capability vocabulary: text form, validation and the subset rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule._tokens._caps import net_target
from capsule.errors import ConfigError
from capsule.tokens import (
    Action,
    Capability,
    TokenClaims,
    compile_grant,
    is_subset,
    parse_capability,
)
from tests.capsule.tokens.strategies import capabilities, concrete_targets, subset_pairs


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("icc:call:dictionary.lookup", "icc:call:dictionary.lookup"),
        ("icc:call:dictionary.*", "icc:call:dictionary.*"),
        ("icc:publish:spell.*", "icc:publish:spell.*"),
        ("icc:subscribe:editor.changed", "icc:subscribe:editor.changed"),
        ("icc:subscribe,publish:a.b", "icc:publish,subscribe:a.b"),
        ("fs:read:/data/words/", "fs:read:/data/words/"),
        ("fs:write,read:/state/?inodes=5&bytes=10", "fs:read,write:/state/?bytes=10&inodes=5"),
        ("fs:read:/", "fs:read:/"),
        ("net:connect:127.0.0.1:8080", "net:connect:127.0.0.1:8080"),
        ("net:connect:Example.ORG.:443", "net:connect:example.org:443"),
        ("net:listen:[0:0::1]:80", "net:listen:[::1]:80"),
    ],
)
def test_parse_gives_the_canonical_text_form(text: str, canonical: str) -> None:
    cap = parse_capability(text)
    assert str(cap) == canonical
    assert parse_capability(canonical) == cap


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("icc:call", "expected kind:action:target"),
        ("ipc:call:a.b", "unknown kind 'ipc'"),
        ("icc:exec:a.b", "unknown icc action 'exec'; valid: call, publish, subscribe"),
        ("icc:call,call:a.b", "given twice"),
        ("icc:call:Dictionary.lookup", "call target must be feature.service"),
        ("icc:call:dictionary", "call target must be feature.service"),
        ("icc:call:*", "call target must be feature.service"),
        ("icc:call:a.*.b", "call target must be feature.service"),
        ("icc:call,publish:a.b", "split them"),
        ("icc:call:dict\u0456onary.lookup", "ASCII only"),  # Cyrillic i
        ("icc:publish:spell.*.x", "topic must be"),
        ("icc:publish:*", "topic must be"),
        ("fs:read:data/words", "must be absolute"),
        ("fs:read:/data/../etc/", "must not contain '..'"),
        ("fs:read:/data//words", "empty segments"),
        ("fs:read:/data/./x", "must not contain"),
        ("fs:read:/a\x00b", "control character"),
        ("fs:read:/cafe\u0301", "NFC"),
        ("fs:read:/a/?quota=1", "unknown limit 'quota=1'; valid for fs: bytes=N, inodes=N"),
        ("fs:read:/a/?bytes=-1", "whole number"),
        ("fs:read:/a/?bytes=1&bytes=2", "given twice"),
        ("net:connect:127.0.0.1", "host:port"),
        ("net:connect:127.0.0.1:0", "port from 1 to 65535"),
        ("net:connect:127.0.0.1:65536", "port from 1 to 65535"),
        ("net:connect:0177.0.0.1:80", "not a dotted-quad"),
        ("net:connect:2130706433:80", "not a dotted-quad"),
        ("net:connect:127.1:80", "not a dotted-quad"),
        ("net:connect:0x7f.0.0.1:80", "looks like a numeric address"),
        ("net:connect:[::ffff:127.0.0.1]:80", "as 127.0.0.1"),
        ("net:connect:[zz]:80", "not an IPv6 address"),
        ("net:connect:exämple.org:80", "ASCII only"),
        ("net:connect:-bad.org:80", "not a valid host name"),
    ],
)
def test_invalid_capabilities_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_capability(text, where="capsule.toml", key="access.call[0]")
    assert fragment in str(info.value)
    assert info.value.path == "capsule.toml"
    assert info.value.key == "access.call[0]"


@pytest.mark.parametrize(
    ("host", "port", "target"),
    [
        ("127.0.0.1", 80, "127.0.0.1:80"),
        ("LocalHost.", 8080, "localhost:8080"),
        ("::1", 443, "[::1]:443"),
        ("[::1]", 443, "[::1]:443"),
        ("0:0::1", 443, "[::1]:443"),
    ],
)
def test_a_destination_is_named_by_its_canonical_target(host: str, port: int, target: str) -> None:
    assert net_target(host, port) == target


@pytest.mark.parametrize(
    ("host", "port", "fragment"),
    [
        ("2130706433", 80, "not a dotted-quad"),
        ("0177.0.0.1", 80, "not a dotted-quad"),
        ("127.1", 80, "not a dotted-quad"),
        ("127.0.0.1.", 80, "not a dotted-quad"),
        ("0x7f.0.0.1", 80, "looks like a numeric address"),
        ("::ffff:127.0.0.1", 80, "as 127.0.0.1"),
        ("fe80::1%eth0", 80, "expected a host name or an IP address"),
        ("a.org?conns=9", 80, "expected a host name or an IP address"),
        ("", 80, "expected a host name or an IP address"),
        ("exämple.org", 80, "ASCII only"),
        ("127.0.0.1", 0, "from 1 to 65535"),
        ("127.0.0.1", 65536, "from 1 to 65535"),
        ("127.0.0.1", True, "from 1 to 65535"),
    ],
)
def test_alternate_spellings_of_a_destination_are_refused(
    host: str, port: int, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        net_target(host, port)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("child", "parent", "expected"),
    [
        ("icc:call:dictionary.lookup", "icc:call:dictionary.*", True),
        ("icc:call:dictionary.*", "icc:call:dictionary.lookup", False),
        ("icc:call:dictionary.a.*", "icc:call:dictionary.*", True),
        ("icc:call:dictionaryx.a", "icc:call:dictionary.*", False),
        ("icc:publish:spell.checked", "icc:publish,subscribe:spell.*", True),
        ("icc:subscribe:spell.checked", "icc:publish:spell.*", False),
        ("fs:read:/data/words/en.txt", "fs:read:/data/", True),
        ("fs:read:/data/", "fs:read:/data/", True),
        ("fs:read:/data", "fs:read:/data/", True),
        ("fs:read:/database/", "fs:read:/data/", False),
        ("fs:read:/data/x", "fs:read:/data/y", False),
        ("fs:write:/data/x/", "fs:read:/data/", False),
        ("fs:read:/state/?bytes=10", "fs:read,write:/state/?bytes=100", True),
        ("fs:read:/state/?bytes=101", "fs:read,write:/state/?bytes=100", False),
        ("fs:read:/state/", "fs:read,write:/state/?bytes=100", False),
        ("net:connect:127.0.0.1:80", "net:connect,listen:127.0.0.1:80", True),
        ("net:connect:127.0.0.1:81", "net:connect:127.0.0.1:80", False),
        ("net:connect:localhost:80", "net:connect:127.0.0.1:80", False),
        ("fs:read:/a/", "icc:call:a.*", False),
    ],
)
def test_subset_rule(child: str, parent: str, expected: bool) -> None:
    assert is_subset(parse_capability(child), parse_capability(parent)) is expected


@given(capabilities)
def test_text_form_round_trips(cap: Capability) -> None:
    assert parse_capability(str(cap)) == cap


@given(child=capabilities, parent=capabilities, data=st.data())
def test_attenuation_never_widens(
    child: Capability, parent: Capability, data: st.DataObject
) -> None:
    """Whatever a subset capability allows, its parent allows too."""
    if not is_subset(child, parent):
        return
    child_grant = compile_grant(
        TokenClaims(jti=b"\x00" * 16, aud="f", iat=0, nbf=0, exp=9, epoch=1, caps=(child,))
    )
    parent_grant = compile_grant(
        TokenClaims(jti=b"\x00" * 16, aud="f", iat=0, nbf=0, exp=9, epoch=1, caps=(parent,))
    )
    target = data.draw(concrete_targets[child.kind])
    for action in Action:
        if child_grant.allows(action, target, 1.0):
            assert parent_grant.allows(action, target, 1.0)
    for name, value in parent.limits:
        child_value = child.limit(name)
        assert child_value is not None
        assert child_value <= value


@given(a=capabilities, b=capabilities, c=capabilities)
def test_subset_is_transitive(a: Capability, b: Capability, c: Capability) -> None:
    if is_subset(a, b) and is_subset(b, c):
        assert is_subset(a, c)


def test_validate_rejects_non_canonical_decoded_capabilities() -> None:
    with pytest.raises(ConfigError):
        Capability(kind="fs", actions=1, target="/a/../b").validate()
    with pytest.raises(ConfigError):
        Capability(kind="icc", actions=8, target="a.b").validate()


@given(pair=subset_pairs, data=st.data())
def test_derived_capabilities_are_subsets_and_allow_no_more(
    pair: tuple[Capability, Capability], data: st.DataObject
) -> None:
    child, parent = pair
    assert is_subset(child, parent)
    test_attenuation_never_widens.hypothesis.inner_test(child, parent, data)  # type: ignore[attr-defined]
