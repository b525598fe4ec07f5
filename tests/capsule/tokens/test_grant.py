"""Compiled grants: the per-message check after admission."""

from __future__ import annotations

import pytest

from capsule.tokens import Action, KeyRing, TokenAuthority, compile_grant

T0 = 1_800_000_000.0


@pytest.fixture
def grant():  # type: ignore[no-untyped-def]
    authority = TokenAuthority(KeyRing.generate(), clock=lambda: T0)
    token = authority.mint(
        "spellcheck",
        [
            "icc:call:dictionary.*",
            "icc:call:editor.save",
            "icc:publish,subscribe:spell.*",
            "fs:read:/data/words/",
            "fs:read,write:/state/notes.db",
            "net:connect:127.0.0.1:8080",
        ],
        ttl=60,
    )
    return compile_grant(authority.verify(token))


@pytest.mark.parametrize(
    ("action", "target", "allowed"),
    [
        (Action.ICC_CALL, "dictionary.lookup", True),
        (Action.ICC_CALL, "dictionary.a.b", True),
        (Action.ICC_CALL, "dictionary.", False),
        (Action.ICC_CALL, "dictionary", False),
        (Action.ICC_CALL, "dictionaryx.lookup", False),
        (Action.ICC_CALL, "editor.save", True),
        (Action.ICC_CALL, "editor.save2", False),
        (Action.ICC_CALL, "ed\u0456tor.save", False),  # Cyrillic i
        (Action.ICC_PUBLISH, "spell.checked", True),
        (Action.ICC_SUBSCRIBE, "spell.checked", True),
        (Action.ICC_PUBLISH, "dictionary.lookup", False),
        (Action.FS_READ, "/data/words/en.txt", True),
        (Action.FS_READ, "/data/words", True),
        (Action.FS_READ, "/data/words/", True),
        (Action.FS_READ, "/data/wordsmith", False),
        (Action.FS_READ, "/data", False),
        (Action.FS_WRITE, "/data/words/en.txt", False),
        (Action.FS_WRITE, "/state/notes.db", True),
        (Action.FS_WRITE, "/state/notes.db-journal", False),
        (Action.NET_CONNECT, "127.0.0.1:8080", True),
        (Action.NET_CONNECT, "127.0.0.1:8081", False),
        (Action.NET_LISTEN, "127.0.0.1:8080", False),
    ],
)
def test_scope(grant, action: Action, target: str, allowed: bool) -> None:  # type: ignore[no-untyped-def]
    assert grant.allows(action, target, T0) is allowed


def test_expiry_and_revocation_are_checked_on_every_call(grant) -> None:  # type: ignore[no-untyped-def]
    assert grant.allows(Action.ICC_CALL, "dictionary.lookup", T0 + 59)
    assert not grant.allows(Action.ICC_CALL, "dictionary.lookup", T0 + 60)
    grant.revoke()
    assert not grant.allows(Action.ICC_CALL, "dictionary.lookup", T0)
