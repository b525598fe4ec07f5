"""The notes demo: validate the app, hand out its authority as tokens, refuse misuse, and
run the features in sandboxed containers that contain a hostile one.

Run with `nox -s demo` (or `python demos/run_demo.py`). Exits 0 when every step behaved
as designed, 1 otherwise, and says which step did not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog

import capsule
import capsule.testing
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


async def run_in_containers() -> None:
    print("\nthe notes app, each feature in its own container and its own file-system view")
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the demo never writes into demos/
        root = Path(tmp)
        shutil.copytree(HERE / "notes", root / "notes")
        options: dict[str, Any] = {"state_dir": root / "state", "audit": root / "audit.jsonl"}
        async with capsule.open_supervisor(root / "notes", **options) as sup:
            # the editor's start exports every note, and the exporter then notifies a
            # webhook through ctx.connect, which is not there yet: the editor fails to
            # start and is quarantined, and the rest of the app goes on
            for name in ["dictionary", "spellcheck", "exporter", "plugin"]:
                stats = sup.feature(name).statistics()
                memory = f"{(stats.memory_current or 0) / 2**20:.1f} MiB"
                step(f"{name} runs in a container", ok=stats.state == "running", detail=memory)
            await through_the_views(sup, root)
            words = await sup.call("plugin", "stats", {})
            step(
                "the plugin counts the public notes it can see",
                ok=words["notes"] > 0,
                detail=str(words),
            )
            old = await capsule.testing.crash(sup, "plugin", signal.SIGKILL)
            again = None
            for _ in range(3):  # a call may still reach the dying container: it fails at once
                with contextlib.suppress(capsule.FeatureCrashedError):
                    again = await sup.call("plugin", "stats", {})
                    break
            step(
                "the plugin is restarted after its container is killed",
                ok=again is not None and sup.feature("plugin").statistics().pid != old,
                detail=str(again),
            )
            reply = await sup.call("dictionary", "lookup", {"words": ["notes"]})
            step("the others kept answering", ok="known" in reply)
            await through_the_broker(sup)


async def through_the_views(sup: capsule.Supervisor, root: Path) -> None:
    """What the features wrote through their views, and what the plugin was refused."""
    exports = sorted(p.name for p in (root / "notes" / "volumes" / "exports").glob("*.md"))
    step(
        "the exporter wrote the editor's first note through its writable view",
        ok="ideas.md" in exports,
        detail=", ".join(exports),
    )
    added = await sup.call("dictionary", "add", {"word": "capsule"})
    stored = root / "notes" / "volumes" / "dictionary-state" / "words.txt"
    step(
        "the dictionary keeps its words in its own storage",
        ok=added["word"] == "capsule" and "capsule" in stored.read_text(encoding="utf-8"),
        detail=f"{added}",
    )
    tried = await sup.call("plugin", "rewrite", {"note": "welcome.md"})
    welcome = root / "notes" / "volumes" / "notes" / "public" / "welcome.md"
    step(
        "the plugin cannot change the notes it may read",
        ok=tried == "EROFS" and "plugin" not in welcome.read_text(encoding="utf-8"),
        detail=f"its write failed with {tried}",
    )
    denials: list[dict[str, Any]] = []
    with anyio.move_on_after(5):  # the audit log is written once a second
        while not denials:
            await anyio.sleep(0.1)
            denials = [
                json.loads(line)
                for line in (root / "audit.jsonl").read_text(encoding="utf-8").splitlines()
                if '"fs-deny"' in line
            ]
    shown = "; ".join(
        f"{d['feature']} {d['operation']} {d['path']}: {d['reason']}" for d in denials
    )
    step(
        "the file-system server audited the refusal",
        ok=any(d["feature"] == "plugin" and d["path"] == "/notes/welcome.md" for d in denials),
        detail=shown,
    )


async def through_the_broker(sup: capsule.Supervisor) -> None:
    print("\nfeatures talk only through the broker, which checks every message")
    async with sup.subscribe("spell.*") as events:
        checked = await sup.call("spellcheck", "check", {"text": "helo wrld", "note": "demo.md"})
        step(
            "spellcheck asks the dictionary, through the broker",
            ok=checked["unknown"] == ["helo", "wrld"],
            detail=str(checked),
        )
        with anyio.fail_after(5):
            event = await events.receive()
        step(
            "its spell.checked event reaches a subscriber, stamped with its sender",
            ok=event.topic == "spell.checked" and event.sender == "spellcheck",
            detail=f"{event.topic} from {event.sender}: {event.payload}",
        )
    stats = sup.statistics()
    step(
        "every decision is audited",
        ok=stats.allowed > 0 and stats.audit_path is not None,
        detail=f"{stats.allowed} allowed, {stats.denied} denied, in {stats.audit_path}",
    )


async def _attack(ctx: Any, request: Any) -> dict[str, Any]:
    """Run inside a container: what a hostile feature tries first."""
    from capsule.testing._probes import syscall32  # noqa: PLC0415 - runs in the container

    results: dict[str, Any] = {}
    for path in ("/etc/hostname", "/root", "/home"):
        try:
            open(path).close()  # noqa: ASYNC230 - the attack is a plain, blocking open()
            results[path] = "read"
        except OSError as exc:
            results[path] = errno.errorcode[exc.errno or 0]
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        results["socket"] = "opened"
    except OSError as exc:
        results["socket"] = errno.errorcode[exc.errno or 0]
    if request.get("int80"):
        syscall32(20)  # getpid through the 32-bit ABI: the filter kills the container
    return results


async def contain_a_hostile_feature(root: Path) -> None:
    print("\na hostile feature, contained")
    app = capsule.testing.TestApp(root, name="hostile")
    app.feature("rogue", restart={"max_restarts": 1, "backoff": "10ms..20ms"}).service("attack")(
        _attack
    )
    app.feature("bystander").service("attack")(_attack)
    async with app.open() as sup:
        seen = await sup.call("rogue", "attack", {})
        step(
            "host files are not in its view", ok=seen["/etc/hostname"] == "ENOENT", detail=str(seen)
        )
        step("it cannot open a network socket", ok=seen["socket"] == "EAFNOSUPPORT")
        try:
            await sup.call("rogue", "attack", {"int80": True})
            killed = None
        except capsule.FeatureCrashedError as exc:
            killed = exc.signal
        step("a 32-bit system call kills it", ok=killed == signal.SIGSYS)
        await sup.feature("rogue").wait_ready(timeout=5)
        with contextlib.suppress(capsule.FeatureCrashedError):
            await sup.call("rogue", "fault", {"kind": "segfault"})
        with anyio.move_on_after(5):
            while sup.feature("rogue").state.value != "quarantined":  # noqa: ASYNC110 - a demo's short poll
                await anyio.sleep(0.01)
        state = sup.feature("rogue").state.value
        step("after too many crashes it is quarantined", ok=state == "quarantined")
        calm = await sup.call("bystander", "attack", {})
        step("its neighbour was never disturbed", ok=calm == seen)
    step("nothing is left behind", ok=capsule.testing.leftovers() == [])


def _render(_: object, __: str, event: dict[str, object]) -> str:
    """Show the log's reasons as indented lines under each step."""
    detail = event.get("reason") or event.get("error") or event.get("last")
    if detail is None and "revoked" in event:
        detail = f"{event['revoked']} revoked"
    who = f"{event['feature']}: " if "feature" in event else ""
    return f"         log: {who}{event['event']}" + (f": {detail}" if detail else "")


def _quiet(_: object, method: str, event: dict[str, object]) -> dict[str, object]:
    """Keep the narration readable: the supervisor's routine info lines are dropped."""
    if method == "info" and event["event"] not in {"token refused"}:
        raise structlog.DropEvent
    return event


def main() -> int:
    structlog.configure(
        processors=[_quiet, _render], logger_factory=structlog.PrintLoggerFactory(sys.stdout)
    )
    print("capsule notes demo\n")
    app = check_apps()
    authority = TokenAuthority(KeyRing.generate())
    tokens = hand_out(app, authority)
    plugin_is_contained(tokens, authority)
    misuse_is_refused(tokens, authority)
    anyio.run(run_in_containers, backend="trio")
    with tempfile.TemporaryDirectory() as tmp:  # this one on asyncio: the host loop is yours
        anyio.run(contain_a_hostile_feature, Path(tmp), backend="asyncio")
    if failures:
        print(f"\n{len(failures)} step(s) did not behave as designed: {', '.join(failures)}")
        return 1
    print("\nall steps behaved as designed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
