"""The notes demo: five features in their own containers doing real work, one of them a
hostile third-party plugin that is contained, denied, restarted and finally quarantined
while the app keeps working; then two spellcheck versions run side by side, the broker
splitting the notes between them; then spellcheck updated live to 1.3.0 (its count and cache
kept) while the editor saves, a broken 1.4.0 rolled back by its probation, and a sixth
feature, word-count, installed while the app runs (once approved) and removed again. The
exporter runs on demand: started by the editor's first export, gone after a second idle.

Run with `nox -s demo` (or `python demos/run_demo.py`, as root). It starts the webhook the
exporter uploads to (an HTTP server on 127.0.0.1:8765), runs a copy of demos/notes in a
temporary directory, and prints what each feature did, what was denied and why, and the
restarts and quarantines. Exits 0 when every step behaved as designed, 1 otherwise (and
says which step did not), 2 when the demo could not run at all (the port is taken).
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

import anyio
import structlog

import capsule
import capsule.testing

HERE: Final = Path(__file__).resolve().parent
WEBHOOK: Final = ("127.0.0.1", 8765)
failures: list[str] = []


def step(title: str, *, ok: bool, detail: str = "") -> None:
    mark = "ok  " if ok else "FAIL"
    print(f"  [{mark}] {title}" + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(title)


# -- the webhook the exporter uploads to ---------------------------------------------------


class _Uploads(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []
    tokens: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append((self.path, self.rfile.read(length)))
        self.tokens.append(self.headers.get("Authorization", ""))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def webhook() -> Iterator[list[tuple[str, bytes]]]:
    """An HTTP server on 127.0.0.1:8765 that records every upload, for the demo's length."""
    _Uploads.received = []
    _Uploads.tokens = []
    server = http.server.ThreadingHTTPServer(WEBHOOK, _Uploads)
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield _Uploads.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- the steps -----------------------------------------------------------------------------


def check_apps() -> None:
    print("1. capsule check: the app's manifests and policy, before anything runs")
    for name, expected in (("notes", 0), ("broken", 1)):
        checked = subprocess.run(
            [sys.executable, "-m", "capsule", "check", str(HERE / name)],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = checked.stdout.strip().splitlines()
        summary = lines[-1] if lines else checked.stderr.strip()
        title = (
            "demos/notes is clean"
            if expected == 0
            else "demos/broken is refused with every mistake listed"
        )
        step(title, ok=checked.returncode == expected, detail=summary)


async def the_scenario(sup: capsule.Supervisor, root: Path, uploads: list[Any]) -> None:
    print("\n2. the app at work: each feature in its container, with its own view of the files")
    for name, handle in sup.features().items():
        stats = handle.statistics()
        memory = f"{(stats.memory_current or 0) / 2**20:.1f} MiB"
        if stats.on_demand:  # the exporter: woken by the editor's first export
            step(f"{name} runs on demand", ok=stats.wakes == 1, detail=f"{stats.wakes} wake")
            continue
        step(f"{name} runs in its container", ok=stats.state == "running", detail=memory)
    exports = sorted(p.name for p in (root / "notes" / "volumes" / "exports").glob("*.md"))
    step(
        "the editor opened each note, had it spell-checked and exported",
        ok=exports == ["ideas.md", "shopping.md"],
        detail="exports: " + ", ".join(exports),
    )
    uploaded = sorted(path for path, _ in uploads)
    step(
        "the exporter uploaded each export to its webhook (the one address it may reach)",
        ok=uploaded == ["/exports/ideas.md", "/exports/shopping.md"],
        detail=", ".join(f"POST {path}" for path in uploaded),
    )
    step(
        "with the token app.toml sets in its environment (env of its policy)",
        ok=set(_Uploads.tokens) == {"Bearer notes-demo"},
        detail=", ".join(sorted(set(_Uploads.tokens))),
    )
    checked = await sup.call("spellcheck", "check", {"text": "helo capsule notes"})
    step(
        "spellcheck reads its word list through its view and asks the dictionary",
        ok=checked["unknown"] == ["capsule", "helo"],
        detail=f"unknown: {checked['unknown']}",
    )
    added = await sup.call("dictionary", "add", {"word": "capsule"})
    stored = root / "state" / "private" / "dictionary" / "state" / "words.txt"
    step(
        "the dictionary keeps the user's words in its private storage",
        ok=stored.is_file() and "capsule" in stored.read_text(encoding="utf-8"),
        detail=f"{added}; on disk in {stored.relative_to(root)}",
    )
    again = await sup.call("spellcheck", "check", {"text": "helo capsule notes"})
    step("and spellcheck now knows the word", ok=again["unknown"] == ["helo"])
    await on_demand(sup, root)


async def on_demand(sup: capsule.Supervisor, root: Path) -> None:
    """The exporter has no container until it is needed, and none once it has been idle."""
    exporter = sup.feature("exporter")
    first = exporter.statistics()
    ready = f"{(first.time_to_ready or 0) * 1000:.0f} ms"
    step(
        "the exporter had no container until the editor's first export started it",
        ok=first.wakes == 1 and first.time_to_ready is not None,
        detail=f"ready {ready} after the call that woke it; the call waited, then was served",
    )
    with anyio.move_on_after(10):
        while exporter.statistics().state != "stopped (on-demand)":  # noqa: ASYNC110 - a demo polls what ps shows
            await anyio.sleep(0.05)
    idle = exporter.statistics()
    step(
        "a second with nothing to do, and it is drained and gone",
        ok=idle.state == "stopped (on-demand)" and idle.pid is None,
        detail=f"state {idle.state}: no process, view or cgroup of it on the host",
    )
    shopping = root / "notes" / "volumes" / "exports" / "shopping.md"
    text = shopping.read_text(encoding="utf-8").split("\n", 1)[1]
    await sup.call("exporter", "export", {"note": "shopping.md", "text": text, "unknown": []})
    woken = exporter.statistics()
    header = shopping.read_text(encoding="utf-8").splitlines()[0]
    step(
        "the next export wakes it again, with the spelling counts it kept (export_state)",
        ok=woken.wakes == 2 and '"words"' in header,
        detail=header,
    )


async def the_plugin(sup: capsule.Supervisor) -> None:
    print("\n3. the untrusted plugin, misbehaving in every way")
    stats = await sup.call("plugin", "stats", {})
    step("its real job works: it counts the public notes", ok=stats["notes"] > 0, detail=str(stats))
    tried = await sup.call("plugin", "snoop", {})
    for attempt, outcome in tried.items():
        step(f"it tries to {attempt}", ok=outcome != "ok", detail=f"refused ({outcome})")
    async with anyio.create_task_group() as tg:
        flooded: dict[str, Any] = {}

        async def flood() -> None:
            flooded.update(await sup.call("plugin", "flood", {"count": 5000}, timeout=60))

        tg.start_soon(flood)
        started = time.perf_counter()
        served = 0
        while not flooded:
            await sup.call("dictionary", "lookup", {"words": ["capsule"]})
            served += 1
        took = time.perf_counter() - started
    step(
        "it floods the broker with messages it may not send: every one refused",
        ok=flooded.get("denied") == flooded.get("sent"),
        detail=f"{flooded.get('denied')} of {flooded.get('sent')} refused",
    )
    step(
        "meanwhile the others kept answering",
        ok=served > 0,
        detail=f"{served} dictionary look-ups in {took:.2f}s",
    )
    plugin = sup.feature("plugin")
    with contextlib.suppress(capsule.FeatureCrashedError):
        await sup.call("plugin", "hog", {}, timeout=30)
    await plugin.wait_ready(timeout=10)
    step(
        "it eats memory: its limit kills it and it is restarted",
        ok=plugin.restarts.total == 1 and "memory" in (plugin.last_exit or ""),
        detail=plugin.last_exit or "",
    )
    while plugin.state is not capsule.FeatureState.QUARANTINED:
        with contextlib.suppress(capsule.FeatureCrashedError, capsule.FeatureUnavailableError):
            await sup.call("plugin", "crash", {}, timeout=10)
        with contextlib.suppress(capsule.FeatureUnavailableError):  # once quarantined
            await plugin.wait_ready(timeout=10)  # restarted after its back-off
    step(
        "it crashes again and again: after its restart limit it is quarantined",
        ok=plugin.state is capsule.FeatureState.QUARANTINED,
        detail=f"{plugin.restarts.total} restarts; last: {plugin.last_exit}",
    )
    try:
        await sup.call("plugin", "stats", {})
        refused = False
    except capsule.FeatureUnavailableError:
        refused = True
    step("calls to it now fail at once", ok=refused)


class _Editing:
    """The host keeps saving a draft through the editor (which has each save spell-checked)
    until stopped; every answer, or the error of a save that got none, is kept."""

    def __init__(self, sup: capsule.Supervisor) -> None:
        self.sup = sup
        self.answers: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop = anyio.Event()

    async def run(self) -> None:
        index = 0
        while not self.stop.is_set():
            draft = {"note": "draft.md", "text": f"draft {index}: capsule notes and tomatos"}
            try:
                self.answers.append(await self.sup.call("editor", "save", draft, timeout=10))
            except capsule.CapsuleError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            index += 1
            await anyio.sleep(0.02)

    def by_version(self) -> dict[str, int]:
        counted = collections.Counter(a.get("by", "no check") for a in self.answers)
        return dict(sorted(counted.items()))


async def _update_settled(sup: capsule.Supervisor, name: str, *, phase: str | None) -> str:
    """Wait (at most 10 s) until ``name``'s update is in ``phase`` (None: over); its status."""
    with anyio.move_on_after(10):
        while True:
            status = sup.feature(name).statistics().update
            if status is None if phase is None else (status or "").endswith(f"({phase})"):
                break
            await anyio.sleep(0.05)
    return sup.feature(name).statistics().update or ""


async def _audited(audit: Path, event: str) -> list[dict[str, Any]]:
    """The audit log's ``event`` lines, once there is one (it is written once a second)."""
    found: list[dict[str, Any]] = []
    with anyio.move_on_after(3):
        while not found:
            await anyio.sleep(0.2)
            lines = (await anyio.Path(audit).read_text(encoding="utf-8")).splitlines()
            found = [e for e in map(json.loads, lines) if e["event"] == event]
    return found


async def two_variants(sup: capsule.Supervisor, root: Path) -> None:
    print("\n4. two spellcheck versions side by side, each note always checked by the same one")
    candidate = root / "notes" / "updates" / "spellcheck-1.3"
    await sup.set_variants("spellcheck", {"1.2.0": 50, str(candidate): 50})
    notes = [f"note-{i}.md" for i in range(12)]
    seen: dict[str, set[str]] = {note: set() for note in notes}
    for _ in range(3):
        for note in notes:
            checked = await sup.call("spellcheck", "check", {"text": "helo wrld", "note": note})
            seen[note].add(checked["version"])
    versions = collections.Counter(next(iter(v)) for v in seen.values() if len(v) == 1)
    step(
        "the broker split the notes between 1.2.0 and 1.3.0, each note sticking to one",
        ok=all(len(v) == 1 for v in seen.values()) and set(versions) == {"1.2.0", "1.3.0"},
        detail=", ".join(f"{v}: {n} notes" for v, n in sorted(versions.items())),
    )
    status = sup.variants("spellcheck")
    print("\n".join(f"         {line}" for line in (status.table() if status else "").splitlines()))
    rows = {} if status is None else {v.version: v for v in status.variants}
    step(
        "each version in its own container, measured by the broker",
        ok=len({v.pid for v in rows.values()}) == 2 and all(v.calls > 0 for v in rows.values()),
        detail=", ".join(f"{v}: pid {r.pid}, {r.calls} calls" for v, r in rows.items()),
    )
    final = await sup.abort_variants("spellcheck")
    step(
        "aborted by hand: 1.2.0 runs alone again, 1.3.0's container gone",
        ok=sup.variants("spellcheck") is None and final.ended == "aborted by hand",
        detail=f"spellcheck runs {sup.feature('spellcheck').manifest.version}",
    )


async def live_updates(sup: capsule.Supervisor, root: Path, audit: Path) -> None:
    print("\n5. spellcheck updated while the editor works, then a broken release rolled back")
    bundles = root / "notes" / "updates"
    before = await sup.call("spellcheck", "stats", {})
    plan = await sup.update("spellcheck", bundles / "spellcheck-1.3", dry_run=True)
    lines = plan.diff.splitlines()
    changed = [line for line in lines if line[:1] in "+-~"]
    step(
        "capsule update --dry-run: 1.3.0 asks for what 1.2.0 holds, nothing to approve",
        ok=not plan.widens and plan.to_version == "1.3.0" and not changed,
        detail=f"{len(lines)} capabilities kept, none added or removed; then "
        f"{len(plan.steps)} steps, from '{plan.steps[0]}'",
    )
    editing = _Editing(sup)
    async with anyio.create_task_group() as tg:
        tg.start_soon(editing.run)
        await anyio.sleep(0.2)
        report = await sup.update("spellcheck", bundles / "spellcheck-1.3")
        await anyio.sleep(0.2)
        editing.stop.set()
    after = await sup.call("spellcheck", "stats", {})
    step(
        "1.3.0 started beside 1.2.0 and took over",
        ok=report.to_version == "1.3.0" and after["version"] == "1.3.0",
        detail=f"calls held {report.pause * 1000:.1f} ms ({report.held} of them), "
        f"{report.state_bytes} bytes of state moved",
    )
    step(
        "its cache came across (export_state of 1.2.0, import_state of 1.3.0)",
        ok=after["from"] == "1.2.0"
        and after["texts"] >= before["texts"] > 0
        and set(before["cached"]) <= set(after["cached"])
        and bool(before["cached"]),
        detail=f"{after['texts']} texts checked by the two ({before['texts']} by 1.2.0 before "
        "the editing began); cached: " + ", ".join(after["cached"]),
    )
    step(
        "the editor kept saving meanwhile: every save answered and checked",
        ok=not editing.errors
        and all(a["checked"] for a in editing.answers)
        and set(editing.by_version()) == {"1.2.0", "1.3.0"},
        detail=f"{len(editing.answers)} saves, checked by "
        + ", ".join(f"{v}: {n}" for v, n in editing.by_version().items())
        + (f"; errors: {editing.errors[:2]}" if editing.errors else ""),
    )
    checked = await sup.call("spellcheck", "check", {"text": "tomatos"})
    step(
        "what 1.3.0 adds: suggestions for unknown words",
        ok=checked["suggestions"].get("tomatos", [])[:1] == ["tomatoes"],
        detail=f"tomatos -> {', '.join(checked['suggestions'].get('tomatos', []))}",
    )
    status = await _update_settled(sup, "spellcheck", phase="keep")
    step(
        "1.3.0 passed its probation; 1.2.0 is kept frozen, in case",
        ok=status == "1.2.0 -> 1.3.0 (keep)",
        detail=status,
    )

    kept = sup.feature("spellcheck").statistics().pid
    editing = _Editing(sup)
    async with anyio.create_task_group() as tg:
        tg.start_soon(editing.run)
        await sup.update("spellcheck", bundles / "spellcheck-1.4")
        status = await _update_settled(sup, "spellcheck", phase=None)
        await anyio.sleep(0.2)
        editing.stop.set()
    rollbacks = await _audited(audit, "update-rollback")
    line = rollbacks[-1] if rollbacks else {}
    step(
        "1.4.0 crashed on its first checks and was rolled back automatically",
        ok=line.get("from_version") == "1.3.0"
        and line.get("to_version") == "1.4.0"
        and "crash" in line.get("reason", ""),
        detail=f"audit: {line.get('event')} {line.get('feature')}: {line.get('reason')}; "
        f"calls held {line.get('pause_ms')} ms, cold start: {line.get('cold')}",
    )
    stats = sup.feature("spellcheck").statistics()
    step(
        "traffic is back on 1.3.0, the same container thawed, its cache intact",
        ok=stats.version == "1.3.0" and stats.pid == kept and status == "",
        detail=f"pid {stats.pid}, {len((await sup.call('spellcheck', 'stats', {}))['cached'])} "
        "cached word(s)",
    )
    unchecked = [a for a in editing.answers if not a["checked"]]
    step(
        "every save of the editor was answered: the note saved, the check skipped while "
        "1.4.0 crashed",
        ok=not editing.errors and bool(unchecked) and editing.answers[-1].get("by") == "1.3.0",
        detail=f"{len(editing.answers)} saves, checked by "
        + ", ".join(f"{v}: {n}" for v, n in editing.by_version().items())
        + (f"; first skipped: {unchecked[0]['why']}" if unchecked else "")
        + (f"; errors: {editing.errors[:2]}" if editing.errors else ""),
    )
    history = [f"{r.version} {r.event}" for r in sup.versions("spellcheck")]
    step(
        "the version history says what ran",
        ok=history[-2:] == ["1.3.0 updated", "1.3.0 rolled-back"],
        detail=", ".join(history),
    )


async def a_plugin_added_while_it_runs(sup: capsule.Supervisor, root: Path) -> None:
    print("\n6. a plugin added while the app runs, then removed")
    bundle = root / "notes" / "plugins" / "word-count"
    review = await sup.review_plugin(bundle)
    step(
        "word-count asks for a read-only view of the public notes: that needs approving",
        ok=review.diff.widens and review.diff.added == ("fs:read:/notes/",),
        detail="capability diff: " + review.diff.render().replace("\n", "; "),
    )
    before = set(capsule.testing.leftovers())  # the app's own containers, views, processes
    try:
        await sup.install(bundle)
        refused = False
    except capsule.ApprovalRequiredError:
        refused = "word-count" not in sup.features()
    step("without approval it is not installed", ok=refused)
    async with sup.subscribe("capsule.service.*") as events:
        await sup.install(bundle, approve=True)
        counted = await sup.call("word-count", "count")
        step(
            "approved, it runs in its own container and answers",
            ok=counted["words"] > 0,
            detail=str(counted),
        )
        await sup.uninstall("word-count")
        try:
            await sup.call("word-count", "count")
            gone = ""
        except capsule.FeatureUnavailableError as exc:
            gone = str(exc)
        step("removed: calls to it fail at once, saying so", ok="was removed" in gone, detail=gone)
        heard = []
        with anyio.move_on_after(5):
            while len(heard) < 2:
                event = await events.receive()
                if event.payload["feature"] == "word-count":
                    heard.append(f"{event.topic} ({event.payload['reason']})")
    step(
        "the app heard it come and go",
        ok=heard == ["capsule.service.up (installed)", "capsule.service.down (removed)"],
        detail=", ".join(heard),
    )
    left = set(capsule.testing.leftovers()) - before
    step(
        "nothing of it is left: no container, view, process or plugin record",
        ok=not left and "word-count" not in sup.features() and sup.plugins() == (),
        detail=", ".join(sorted(left)) or f"{len(sup.features())} features run, as before",
    )


async def the_app_goes_on(sup: capsule.Supervisor) -> None:
    print("\n7. the app goes on")
    saved = await sup.call("editor", "save", {"note": "after.md", "text": "still here"})
    checked = await sup.call("spellcheck", "check", {"text": "still here"})
    step(
        "the editor saves, spellcheck checks, the dictionary answers",
        ok=saved["bytes"] == 10 and checked["unknown"] == [],
        detail=f"{saved}, {checked}",
    )


def _tally(events: list[dict[str, Any]]) -> dict[str, collections.Counter[str]]:
    """Per feature: file operations and messages allowed and denied, from the audit log."""
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for event in events:
        if event["decision"] not in {"allow", "deny"}:
            continue
        files = event["event"].startswith("fs-") or str(event.get("capability", "")).startswith(
            "fs:"
        )
        kind = ("files " if files else "messages ") + event["decision"]
        tally[event["feature"]][kind] += event.get("count", 1)
    return tally


def summary(sup: capsule.Supervisor, audit: Path) -> None:
    print("\n8. what happened (counts from the audit log)")
    events = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
    tally = _tally(events)
    print(
        f"   {'feature':11} {'state':12} {'restarts':>8} {'files ok':>9} {'denied':>7} "
        f"{'messages ok':>12} {'denied':>7}"
    )
    for name, handle in sup.features().items():
        counts = tally[name]
        print(
            f"   {name:11} {handle.state.value:12} {handle.restarts.total:>8} "
            f"{counts['files allow']:>9} {counts['files deny']:>7} "
            f"{counts['messages allow']:>12} {counts['messages deny']:>7}"
        )
    denied: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for event in events:
        if event["decision"] == "deny":
            what = event.get("capability") or event.get("path") or "(a flood, summarised)"
            denied[(event["feature"], what, event.get("reason", ""))] += event.get("count", 1)
    print("\n   denied, and why:")
    for (feature, what, reason), count in sorted(denied.items()):
        print(f"   {count:>6}x {feature}: {what}: {reason}")
    print("\n   restarts and quarantines:")
    for name, handle in sup.features().items():
        if handle.restarts.total or handle.state is capsule.FeatureState.QUARANTINED:
            print(
                f"   {name}: {handle.restarts.total} restarts, now {handle.state.value}; "
                f"last exit: {handle.last_exit}"
            )
    step(
        "every refusal is in the audit log, naming the feature and the reason",
        ok=bool(denied) and all(feature == "plugin" for feature, _, _ in denied),
        detail=f"{sum(denied.values())} refusals, all the plugin's, in {audit.name}",
    )


async def run_app(root: Path, uploads: list[Any]) -> None:
    shutil.copytree(HERE / "notes", root / "notes")  # the demo never writes into demos/
    audit = root / "audit.jsonl"
    options: dict[str, Any] = {"state_dir": root / "state", "audit": audit}
    async with capsule.open_supervisor(root / "notes", **options) as sup:
        await the_scenario(sup, root, uploads)
        await the_plugin(sup)
        await two_variants(sup, root)
        await live_updates(sup, root, audit)
        await a_plugin_added_while_it_runs(sup, root)
        await the_app_goes_on(sup)
        await anyio.sleep(1.1)  # the audit log is written once a second
        summary(sup, audit)
    step("nothing is left behind: containers, views, cgroups", ok=capsule.testing.leftovers() == [])


def _render(_: object, __: str, event: dict[str, object]) -> str:
    """The supervisor's warnings and errors, as indented lines under the steps."""
    detail = event.get("reason") or event.get("error") or event.get("last")
    who = f"{event['feature']}: " if "feature" in event else ""
    return f"         log: {who}{event['event']}" + (f": {detail}" if detail else "")


def _quiet(_: object, method: str, event: dict[str, object]) -> dict[str, object]:
    if method in {"debug", "info"}:
        raise structlog.DropEvent
    return event


def main() -> int:
    structlog.configure(
        processors=[_quiet, _render], logger_factory=structlog.PrintLoggerFactory(sys.stdout)
    )
    print("capsule notes demo\n")
    check_apps()
    try:
        hook = webhook()
        uploads = hook.__enter__()
    except OSError as exc:
        print(f"cannot start the demo's webhook on {WEBHOOK[0]}:{WEBHOOK[1]}: {exc}")
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="capsule-demo-") as tmp:
            anyio.run(run_app, Path(tmp), uploads, backend="trio")
    finally:
        hook.__exit__(None, None, None)
    if failures:
        print(f"\n{len(failures)} step(s) did not behave as designed: {', '.join(failures)}")
        return 1
    print("\nall steps behaved as designed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
