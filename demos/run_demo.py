"""The notes demo: validate the app, hand out its authority as tokens, and refuse misuse.

Run with `nox -s demo` (or `python demos/run_demo.py`). Exits 0 when every step behaved
as designed, 1 otherwise, and says which step did not.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

import capsule
from capsule.errors import CapabilityDeniedError, InvalidTokenError
from capsule.tokens import Action, KeyRing, Token, TokenAuthority, compile_grant

HERE = Path(__file__).resolve().parent
failures: list[str] = []


def step(title: str, *, ok: bool, detail: str = "") -> None:
    mark = "ok  " if ok else "FAIL"
    print(f"  [{mark}] {title}" + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(title)


def refused(action: Callable[[], object]) -> bool:
    try:
        action()
    except (InvalidTokenError, CapabilityDeniedError):
        return True
    return False


def check_apps() -> capsule.App:
    print("1. capsule check")
    notes = subprocess.run(
        [sys.executable, "-m", "capsule", "check", str(HERE / "notes")],
        capture_output=True,
        text=True,
        check=False,
    )
    step(
        "demos/notes is clean",
        ok=notes.returncode == 0,
        detail=notes.stdout.strip().splitlines()[-1],
    )
    broken = subprocess.run(
        [sys.executable, "-m", "capsule", "check", str(HERE / "broken")],
        capture_output=True,
        text=True,
        check=False,
    )
    summary = broken.stdout.strip().splitlines()[-1] if broken.stdout.strip() else broken.stderr
    step(
        "demos/broken is refused with every mistake listed",
        ok=broken.returncode == 1,
        detail=summary,
    )
    return capsule.load_app(HERE / "notes")


def hand_out(app: capsule.App, authority: TokenAuthority) -> dict[str, Token]:
    print("\n2. each feature's authority, minted from the app's policy")
    tokens: dict[str, Token] = {}
    for name in app.start_order:
        caps = app.grants[name].capabilities
        tokens[name] = authority.mint(name, caps, ttl=600)
        listed = ", ".join(str(c) for c in caps) or "nothing"
        print(f"     {name:<11} {tokens[name].token_id[:12]}  {listed}")
    return tokens


def plugin_is_contained(tokens: dict[str, Token], authority: TokenAuthority) -> None:
    print("\n3. the untrusted plugin is held to its grant")
    grant = compile_grant(authority.verify(tokens["plugin"], aud="plugin"))
    now = time.time()
    tries = [
        (Action.FS_READ, "/notes/welcome.md", True),
        (Action.FS_WRITE, "/notes/welcome.md", False),
        (Action.FS_READ, "/data/words/words.txt", False),
        (Action.ICC_CALL, "dictionary.lookup", False),
        (Action.ICC_PUBLISH, "editor.changed", False),
        (Action.NET_CONNECT, "127.0.0.1:8765", False),
    ]
    for action, target, expected in tries:
        allowed = grant.allows(action, target, now)
        verdict = "allowed" if allowed else "denied"
        step(f"plugin {action.name.lower()} {target}", ok=allowed is expected, detail=verdict)


def misuse_is_refused(tokens: dict[str, Token], authority: TokenAuthority) -> None:
    print("\n4. forged, tampered, expired, misdirected, widened and revoked tokens")
    spell = tokens["spellcheck"]
    forger = TokenAuthority(KeyRing.generate())
    forged = forger.mint("spellcheck", ["icc:call:dictionary.*"])
    step("a token signed by another key", ok=refused(lambda: authority.verify(forged)))
    raw = bytearray(spell.raw)
    raw[-3] ^= 0x01
    step("a token with one byte changed", ok=refused(lambda: authority.verify(bytes(raw))))
    later = time.time() + 3600
    step("a token after its expiry", ok=refused(lambda: authority.verify_at_time(spell, now=later)))
    step(
        "the plugin presenting spellcheck's token",
        ok=refused(lambda: authority.verify(spell, aud="plugin")),
    )
    step(
        "spellcheck widening its token to dictionary.*",
        ok=refused(
            lambda: authority.attenuate(spell, ["icc:call:dictionary.*"], holder="spellcheck")
        ),
    )
    narrow = authority.attenuate(
        spell, ["icc:call:dictionary.lookup"], holder="spellcheck", aud="editor", ttl=30
    )
    step(
        "spellcheck delegating dictionary.lookup to the editor for 30s",
        ok=authority.verify(narrow, aud="editor").parent_id == spell.token_id,
    )
    revoked = authority.revoke(spell)
    step(
        "revoking spellcheck's token refuses the delegated one too",
        ok=refused(lambda: authority.verify(narrow, aud="editor")) and len(revoked) == 2,
        detail=f"{len(revoked)} tokens revoked",
    )
    authority.rotate()
    step(
        "rotating the key refuses every older token",
        ok=all(refused(lambda t=t: authority.verify(t)) for t in tokens.values()),
    )


def _render(_: object, __: str, event: dict[str, object]) -> str:
    """Show the log's refusal reasons as indented lines under each step."""
    detail = event.get("reason") or f"{event.get('revoked')} revoked"
    return f"         log: {event['event']}: {detail}"


def main() -> int:
    structlog.configure(
        processors=[_render], logger_factory=structlog.PrintLoggerFactory(sys.stdout)
    )
    print("capsule notes demo\n")
    app = check_apps()
    authority = TokenAuthority(KeyRing.generate())
    tokens = hand_out(app, authority)
    plugin_is_contained(tokens, authority)
    misuse_is_refused(tokens, authority)
    if failures:
        print(f"\n{len(failures)} step(s) did not behave as designed: {', '.join(failures)}")
        return 1
    print("\nall steps behaved as designed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
