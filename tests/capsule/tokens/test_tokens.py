"""Minting, verification and every way a token must be refused."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import msgspec
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsule._tokens._format import (
    DOMAIN,
    MAX_CHAIN,
    MAX_TEXT_LENGTH,
    TokenClaims,
    encode_claims,
    header,
)
from capsule.errors import CapabilityDeniedError, ConfigError, InvalidTokenError
from capsule.tokens import (
    MAX_CAPABILITIES,
    MAX_TOKEN_SIZE,
    KeyRing,
    RevocationList,
    Token,
    TokenAuthority,
    inspect_token,
    parse_capability,
)

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(clock: Clock) -> TokenAuthority:
    return TokenAuthority(KeyRing.from_seed(b"k" * 32), clock=clock)


@pytest.fixture
def token(authority: TokenAuthority) -> Token:
    return authority.mint(
        "spellcheck",
        ["icc:call:dictionary.*", "fs:read,write:/state/?bytes=1000", "net:connect:127.0.0.1:80"],
        ttl=60,
    )


def _refused(authority: TokenAuthority, token: Token | str | bytes, aud: str | None = None) -> bool:
    try:
        authority.verifier.verify(token, aud=aud)
    except InvalidTokenError as exc:
        message = str(exc)
    else:
        return False
    assert message == "invalid token"  # opaque: the reason is only in the log
    return True


def test_a_minted_token_verifies_with_its_claims(authority: TokenAuthority, token: Token) -> None:
    claims = authority.verify(token.text, aud="spellcheck")
    assert claims.aud == "spellcheck"
    assert [str(c) for c in claims.caps] == [
        "icc:call:dictionary.*",
        "fs:read,write:/state/?bytes=1000",
        "net:connect:127.0.0.1:80",
    ]
    assert claims.exp - claims.nbf == 60
    assert len(claims.token_id) == 32
    assert claims == token.claims


def test_token_ids_are_random(authority: TokenAuthority) -> None:
    ids = {authority.mint("a", ["icc:call:b.c"]).token_id for _ in range(50)}
    assert len(ids) == 50


def test_expired_and_not_yet_valid_tokens_are_refused(
    authority: TokenAuthority, token: Token
) -> None:
    v = authority.verifier
    assert v.verify_at_time(token, now=T0 + 59.999).aud == "spellcheck"
    with pytest.raises(InvalidTokenError):
        v.verify_at_time(token, now=T0 + 60)
    with pytest.raises(InvalidTokenError):
        v.verify_at_time(token, now=T0 - 0.001)
    with pytest.raises(InvalidTokenError):
        v.verify_at_time(token, now=float("nan"))
    later = authority.mint("a", ["icc:call:b.c"], not_before=T0 + 10, ttl=60)
    with pytest.raises(InvalidTokenError):
        v.verify_at_time(later, now=T0 + 5)
    assert v.verify_at_time(later, now=T0 + 10).aud == "a"


def test_expiry_follows_the_injected_clock(
    authority: TokenAuthority, token: Token, clock: Clock
) -> None:
    clock.now = T0 + 61
    assert _refused(authority, token)


def test_wrong_audience_is_refused(authority: TokenAuthority, token: Token) -> None:
    assert _refused(authority, token, aud="editor")
    assert not _refused(authority, token, aud="spellcheck")


def test_the_refusal_reason_goes_to_the_log(authority: TokenAuthority, token: Token) -> None:
    with structlog.testing.capture_logs() as logs:
        assert _refused(authority, token, aud="editor")
    assert logs[0]["event"] == "token refused"
    assert "presented as 'editor'" in logs[0]["reason"]
    assert logs[0]["log_level"] == logging.getLevelName(logging.WARNING).lower()


def test_a_token_from_another_key_is_refused(token: Token) -> None:
    stranger = TokenAuthority(KeyRing.from_seed(b"z" * 32))
    assert _refused(stranger, token)
    forged = stranger.mint("spellcheck", ["icc:call:dictionary.*"])
    other = TokenAuthority(KeyRing.from_seed(b"k" * 32))
    assert _refused(other, forged)


def test_a_token_signed_over_a_different_domain_is_refused(authority: TokenAuthority) -> None:
    claims = authority.mint("a", ["icc:call:b.c"]).claims
    head, body = header(claims.epoch), encode_claims(claims)
    key = KeyRing.from_seed(b"k" * 32)
    bad = key.sign(b"another protocol\x00" + head + body)
    assert _refused(authority, head + bad + body)
    good = key.sign(DOMAIN + head + body)
    assert not _refused(authority, head + good + body)


def test_key_rotation_refuses_older_epochs(authority: TokenAuthority, token: Token) -> None:
    assert authority.epoch == 1
    assert authority.rotate() == 2
    assert _refused(authority, token)
    fresh = authority.mint("spellcheck", ["icc:call:dictionary.*"])
    assert fresh.claims.epoch == 2
    assert not _refused(authority, fresh)


def test_header_epoch_must_match_the_signing_key(authority: TokenAuthority, token: Token) -> None:
    raw = bytearray(token.raw)
    raw[4] ^= 0x01  # epoch 1 -> 0: selects no key
    assert _refused(authority, bytes(raw))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_refused(
    authority: TokenAuthority, token: Token, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(token.raw) - 1))
    delta = data.draw(st.integers(1, 255))
    raw = bytearray(token.raw)
    raw[index] ^= delta
    assert _refused(authority, bytes(raw))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_character_change_of_the_text_is_refused(
    authority: TokenAuthority, token: Token, data: st.DataObject
) -> None:
    text = token.text
    index = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != text[index]))
    assert _refused(authority, text[:index] + replacement + text[index + 1 :])


def test_truncated_and_extended_tokens_are_refused(authority: TokenAuthority, token: Token) -> None:
    for cut in (0, 1, 5, 69, len(token.raw) - 1):
        assert _refused(authority, token.raw[:cut])
    assert _refused(authority, token.raw + b"\x00")
    assert _refused(authority, token.text[:-1])
    assert _refused(authority, token.text + "A")
    assert _refused(authority, token.text.replace("ctk1.", "ctk2."))


def test_non_canonical_base64_spellings_are_refused(authority: TokenAuthority) -> None:
    # find a token whose last base64 character carries padding bits, then set them
    for _ in range(20):
        tok = authority.mint("a", ["icc:call:b.c"])
        if len(tok.raw) % 3:
            break
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = tok.text[-1]
    twin = tok.text[:-1] + alphabet[alphabet.index(last) + 1]
    assert base64.urlsafe_b64decode(twin[5:] + "==")[: len(tok.raw)] == tok.raw
    assert _refused(authority, twin)


def test_size_limits_are_checked_before_any_cryptography(authority: TokenAuthority) -> None:
    huge = "ctk1." + "A" * (MAX_TEXT_LENGTH + 10)
    v = authority.verifier
    assert v.diagnose(huge)[1] == "not a ctk1 token text"
    assert v.diagnose(b"\x01" * (MAX_TOKEN_SIZE + 1))[1] == "token size out of range"
    with pytest.raises(ConfigError, match="1 to 32 capabilities"):
        authority.mint("a", [f"icc:call:b.c{i}" for i in range(MAX_CAPABILITIES + 1)])
    with pytest.raises(ConfigError, match="1 to 32 capabilities"):
        authority.mint("a", [])
    with pytest.raises(ConfigError, match="over the 4096-byte limit"):
        authority.mint("a", [f"fs:read:/{'x' * 200}{i}/" for i in range(MAX_CAPABILITIES)])
    big = authority.mint("a", [f"fs:read:/{'x' * 100}{i}/" for i in range(MAX_CAPABILITIES)])
    assert len(big.raw) <= MAX_TOKEN_SIZE
    assert len(authority.verify(big.text).caps) == MAX_CAPABILITIES


def test_bad_mint_arguments_are_config_errors(authority: TokenAuthority) -> None:
    with pytest.raises(ConfigError, match="audience must be a feature name"):
        authority.mint("Editor", ["icc:call:b.c"])
    with pytest.raises(ConfigError, match="ttl must be"):
        authority.mint("a", ["icc:call:b.c"], ttl=0)
    with pytest.raises(ConfigError, match="ttl must be"):
        authority.mint("a", ["icc:call:b.c"], ttl=float("nan"))
    with pytest.raises(ConfigError, match="unknown kind"):
        authority.mint("a", ["dbus:call:x"])


# -- attenuation -----------------------------------------------------------------


def test_attenuation_narrows_and_records_the_chain(
    authority: TokenAuthority, token: Token, clock: Clock
) -> None:
    clock.now = T0 + 5
    child = authority.attenuate(
        token, ["icc:call:dictionary.lookup", "fs:read:/state/words/"], aud="editor", ttl=10
    )
    claims = authority.verify(child, aud="editor")
    assert [str(c) for c in claims.caps] == [
        "icc:call:dictionary.lookup",
        "fs:read:/state/words/?bytes=1000",  # the parent's quota is inherited
    ]
    assert claims.chain == (token.claims.jti,)
    assert claims.exp == T0 + 15
    assert claims.parent_id == token.token_id


def test_attenuation_never_extends_expiry(authority: TokenAuthority, token: Token) -> None:
    child = authority.attenuate(token, ttl=3600)
    assert child.claims.exp == token.claims.exp


def test_widening_is_refused_with_the_capability_named(
    authority: TokenAuthority, token: Token
) -> None:
    for wider in (
        "icc:call:dictionaries.lookup",
        "icc:publish:dictionary.x",
        "fs:read:/",
        "fs:read,write:/state/?bytes=1001",
        "net:connect:127.0.0.1:81",
        "net:listen:127.0.0.1:80",
    ):
        with pytest.raises(CapabilityDeniedError) as info:
            authority.attenuate(token, [wider])
        assert info.value.capability == str(parse_capability(wider))
        assert info.value.feature == "spellcheck"
        assert isinstance(info.value, PermissionError)


def test_two_narrow_grants_are_never_combined(authority: TokenAuthority) -> None:
    parent = authority.mint("a", ["fs:read:/data/", "fs:write:/data/"])
    with pytest.raises(CapabilityDeniedError):
        authority.attenuate(parent, ["fs:read,write:/data/x/"])
    both = authority.attenuate(parent, ["fs:read:/data/x/", "fs:write:/data/x/"])
    assert len(both.claims.caps) == 2


def test_only_the_holder_can_attenuate_when_holder_is_given(
    authority: TokenAuthority, token: Token
) -> None:
    with pytest.raises(InvalidTokenError):
        authority.attenuate(token, holder="editor")
    assert authority.attenuate(token, holder="spellcheck").claims.aud == "spellcheck"


def test_attenuating_an_invalid_parent_is_refused(
    authority: TokenAuthority, token: Token, clock: Clock
) -> None:
    clock.now = T0 + 120
    with pytest.raises(InvalidTokenError):
        authority.attenuate(token)


def test_derivation_depth_is_limited(authority: TokenAuthority, token: Token) -> None:
    current = token
    for _ in range(MAX_CHAIN):
        current = authority.attenuate(current)
    assert len(current.claims.chain) == MAX_CHAIN
    with pytest.raises(ConfigError, match="derivations deep"):
        authority.attenuate(current)


# -- revocation ------------------------------------------------------------------


def test_revoking_a_token_revokes_everything_derived_from_it(
    authority: TokenAuthority, token: Token
) -> None:
    child = authority.attenuate(token, ["icc:call:dictionary.lookup"], aud="editor")
    grandchild = authority.attenuate(child, aud="exporter")
    sibling = authority.mint("spellcheck", ["icc:call:dictionary.*"])
    revoked = authority.revoke(child)
    assert revoked == {child.token_id, grandchild.token_id}
    assert _refused(authority, child)
    assert _refused(authority, grandchild)
    assert not _refused(authority, token)
    assert not _refused(authority, sibling)


def test_a_revoked_ancestor_refuses_descendants_minted_elsewhere(token: Token) -> None:
    """The chain inside each token carries the ancestry, so no shared tree is needed."""
    minting = TokenAuthority(KeyRing.from_seed(b"k" * 32), clock=lambda: T0)
    child = minting.attenuate(token, aud="editor")
    checking = TokenAuthority(KeyRing.from_seed(b"k" * 32), clock=lambda: T0)
    assert not _refused(checking, child)
    checking.revoke(token.token_id)
    assert _refused(checking, child)


def test_revocation_listeners_run_before_revoke_returns(
    authority: TokenAuthority, token: Token
) -> None:
    seen: list[frozenset[bytes]] = []
    authority.revocations.add_listener(seen.append)
    authority.revoke(token)
    assert seen == [frozenset({token.claims.jti})]
    authority.revoke(token)  # already revoked: nothing new, no call
    assert len(seen) == 1


def test_revocation_files_round_trip_and_report_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    revocations = RevocationList()
    revocations.revoke(b"\x01" * 16)
    revocations.save(path)
    assert b"\x01" * 16 in RevocationList.load(path)
    assert len(RevocationList.load(tmp_path / "absent")) == 0
    path.write_text("# comment\n" + "01" * 16 + "\nnot-an-id\n")
    with pytest.raises(ConfigError) as info:
        RevocationList.load(path)
    assert info.value.line == 3
    assert "not-an-id" in str(info.value)


# -- inspection ------------------------------------------------------------------


def test_inspect_decodes_without_verifying(token: Token) -> None:
    stranger = TokenAuthority(KeyRing.from_seed(b"z" * 32))
    assert inspect_token(token.text).aud == "spellcheck"
    assert _refused(stranger, token)


def test_inspect_refuses_garbage() -> None:
    for junk in ("", "ctk1.", "ctk1.!!!", "hello", "ctk1." + "A" * 200):
        with pytest.raises(InvalidTokenError):
            inspect_token(junk)


def test_a_signed_but_malformed_body_is_refused(authority: TokenAuthority) -> None:
    """Even the key holder cannot get a body outside the vocabulary accepted."""
    key = KeyRing.from_seed(b"k" * 32)
    bodies = [
        msgspec.msgpack.encode([b"\x00" * 16, "a", T0, T0, T0 + 9, 1, [["icc", 1, "A.B", []]], []]),
        msgspec.msgpack.encode([b"\x00" * 15, "a", T0, T0, T0 + 9, 1, [["icc", 1, "a.b", []]], []]),
        msgspec.msgpack.encode([b"\x00" * 16, "a", T0, T0, T0 + 9, 2, [["icc", 1, "a.b", []]], []]),
        msgspec.msgpack.encode([b"\x00" * 16, "a", T0, T0, T0 + 9, 1, [], []]),
        msgspec.msgpack.encode([b"\x00" * 16, "a", T0, T0 + 9, T0, 1, [["icc", 1, "a.b", []]], []]),
        msgspec.msgpack.encode(
            [b"\x00" * 16, "a", T0, T0, T0 + 9, 1, [["icc", 1, "a.b", []]], [], 7]
        ),
        b"\xc1",
    ]
    for body in bodies:
        head = header(1)
        raw = head + key.sign(DOMAIN + head + body) + body
        assert _refused(authority, raw), body
    ok = msgspec.msgpack.encode([b"\x00" * 16, "a", T0, T0, T0 + 9, 1, [["icc", 1, "a.b", []]], []])
    head = header(1)
    assert authority.verify_at_time(head + key.sign(DOMAIN + head + ok) + ok, now=T0).aud == "a"
    assert isinstance(inspect_token(head + key.sign(DOMAIN + head + ok) + ok), TokenClaims)


def test_the_derivation_tree_forgets_expired_tokens(
    authority: TokenAuthority, clock: Clock
) -> None:
    parent = authority.mint("a", ["icc:call:b.*"], ttl=3600)
    for _ in range(1100):
        authority.attenuate(parent, ttl=1)
    assert authority.revocations.derivations() == 1100
    clock.now = T0 + 2
    live = authority.attenuate(parent, ttl=600)
    assert authority.revocations.prune(clock.now) == 1100
    assert authority.revocations.derivations() == 1
    assert authority.revoke(parent) == {parent.token_id, live.token_id}


def test_a_renewal_keeps_audience_and_capabilities_under_a_new_id_and_expiry(
    authority: TokenAuthority, clock: Clock, token: Token
) -> None:
    clock.now = T0 + 40
    renewed = authority.renew(token, ttl=60)
    claims = authority.verify(renewed, aud="spellcheck")
    assert renewed.token_id != token.token_id
    assert (claims.aud, claims.caps, claims.chain) == ("spellcheck", token.claims.caps, ())
    assert (claims.iat, claims.exp) == (T0 + 40, T0 + 100)
    authority.retire(token)
    assert _refused(authority, token)  # retired: only the renewal is good now
    assert authority.verify(renewed) == claims
    clock.now = T0 + 70  # past the old expiry, inside the new one
    assert authority.verify(renewed) == claims


def test_revoked_expired_and_delegated_tokens_are_not_renewed(
    authority: TokenAuthority, clock: Clock, token: Token
) -> None:
    child = authority.attenuate(token, ["icc:call:dictionary.lookup"])
    with pytest.raises(ConfigError, match="delegated"):
        authority.renew(child, ttl=60)
    clock.now = T0 + 60
    with pytest.raises(InvalidTokenError):
        authority.renew(token, ttl=60)
    clock.now = T0
    authority.revoke(token)
    with pytest.raises(InvalidTokenError):
        authority.renew(token, ttl=60)


def test_revoking_any_id_of_a_renewal_chain_revokes_its_live_end(
    authority: TokenAuthority, clock: Clock, token: Token
) -> None:
    """Each renewal is linked to the token it renews, and pruning the derivation tree keeps
    an expired link for as long as a renewal it leads to lives."""
    chain = [token]
    for step in range(1, 6):
        clock.now = T0 + 40 * step
        chain.append(authority.renew(chain[-1], ttl=60))
        authority.retire(chain[-2])
    live = chain[-1]
    clock.now = T0 + 205  # every token but the last two has expired
    authority.revocations.prune(clock.now)
    assert authority.verify(live)
    for old in chain[:-1]:
        assert _reaches(authority.revocations, old.claims.jti, live.claims.jti), chain.index(old)
    assert authority.revoke(chain[1]) == {live.token_id}
    assert _refused(authority, live)


def _reaches(revocations: RevocationList, start: bytes, goal: bytes) -> bool:
    stack, seen = [start], set()
    while stack:
        jti = stack.pop()
        if jti == goal:
            return True
        if jti not in seen:
            seen.add(jti)
            stack.extend(revocations.children(jti))
    return False


def test_pruning_still_forgets_what_leads_to_no_live_token(
    authority: TokenAuthority, clock: Clock, token: Token
) -> None:
    renewed = authority.renew(token, ttl=60)
    authority.attenuate(renewed, ttl=10)
    clock.now = T0 + 61
    authority.revocations.prune(clock.now)
    assert authority.revocations.derivations() == 0
    assert authority.revocations.children(token.claims.jti) == frozenset()
    assert authority.revocations.children(renewed.claims.jti) == frozenset()
