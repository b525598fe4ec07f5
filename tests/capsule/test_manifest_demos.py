"""The demo apps: notes checks clean; broken reports exactly the mistakes its README lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from capsule._manifest import CheckReport, Severity, check_app, load_app

ROOT = Path(__file__).resolve().parents[2]
BROKEN_README = ROOT / "demos" / "broken" / "README.md"
_ROW = re.compile(
    r"^\| (\d+) \| (.+?) \| `([^`:]+):(\d+)` \| (?:`([^`]+)`|\(none\)) \| (error|warning) \|$"
)


def planted() -> list[tuple[str, int, str, str]]:
    """(file, line, key, severity) of every row of the broken demo's README table."""
    rows = []
    for text in BROKEN_README.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(text)
        if match:
            _, _, file, line, key, severity = match.groups()
            rows.append((f"demos/broken/{file}", int(line), key or "", severity))
    return rows


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.fixture
def broken(in_repo: None) -> CheckReport:
    return check_app("demos/broken")


@pytest.mark.usefixtures("in_repo")
def test_notes_is_clean() -> None:
    report = check_app("demos/notes")
    assert report.problems == ()
    app = load_app("demos/notes")
    assert app.manifest.name == "notes"
    # the exporter starts on demand: the editor calls it without requiring it
    assert app.start_order == ("dictionary", "spellcheck", "editor", "exporter", "plugin")
    assert app.manifest.start_policy("exporter").on_demand
    assert set(app.volumes) == {"words", "notes", "exports"}
    (state,) = app.grants["dictionary"].mounts
    assert (state.view, state.storage, state.quota) == ("/state", "private", 16 << 20)


@pytest.mark.usefixtures("in_repo")
def test_notes_plugin_is_confined() -> None:
    """The untrusted plugin gets a read-only view of the public notes and its events, only."""
    app = load_app("demos/notes")
    grant = app.grants["plugin"]
    assert [str(c) for c in grant.capabilities] == [
        "icc:subscribe:editor.changed",
        "fs:read:/notes/",
    ]
    (mount,) = grant.mounts
    assert (mount.view, mount.mode, mount.volume) == ("/notes", "ro", "notes/public")
    assert mount.host == ROOT / "demos/notes/volumes/notes/public"
    manifest = app.features["plugin"]
    assert "untrusted" in manifest.description.lower()
    assert (manifest.restart.policy, manifest.restart.max_restarts) == ("on-failure", 3)
    assert manifest.limits.memory < app.features["editor"].limits.memory


@pytest.mark.usefixtures("in_repo")
def test_notes_routes() -> None:
    routes = {(r.kind, r.source, r.target, r.name) for r in load_app("demos/notes").routes}
    assert routes == {
        ("call", "editor", "spellcheck", "check"),
        ("call", "editor", "exporter", "export"),
        ("call", "spellcheck", "dictionary", "lookup"),
        ("event", "editor", "spellcheck", "editor.changed"),
        ("event", "editor", "plugin", "editor.changed"),
        ("event", "spellcheck", "exporter", "spell.checked"),
    }


@pytest.mark.usefixtures("in_repo")
def test_notes_word_list_is_real_content() -> None:
    words = Path("demos/notes/volumes/words/words.txt").read_text(encoding="utf-8").split()
    assert len(words) >= 300
    assert words == sorted(set(words))
    assert all(word.isalpha() and word.islower() for word in words)


def test_the_readme_lists_at_least_ten_kinds_of_mistake() -> None:
    rows = planted()
    assert len(rows) >= 10
    assert len(rows) == len(set(rows))


def test_broken_reports_every_planted_mistake_and_nothing_else(broken: CheckReport) -> None:
    reported = [(p.path, p.line, p.key, p.severity.value) for p in broken.problems]
    assert sorted(reported, key=str) == sorted(planted(), key=str)


@pytest.mark.parametrize(
    ("file", "key", "fragment"),
    [
        ("app.toml", "app.features[5]", 'declares feature "spellcheck"'),
        ("app.toml", "app.features[6]", "is listed twice"),
        ("app.toml", "app.features[7]", "does not exist"),
        ("app.toml", "app.features[8]", "no capsule.toml"),
        ("app.toml", "app.stratgy", 'did you mean "strategy"'),
        ("app.toml", "volumes.exports", 'volume directory "volumes/exprots" does not exist'),
        ("app.toml", "policy.dictionary.fs[0].volume", 'volume "dictionary-data" is not defined'),
        ("app.toml", "policy.exporter.env.PATH", '"PATH" is set by capsule itself'),
        ("app.toml", "policy.word-stats", "the app has no feature of that name"),
        ("features/editor/capsule.toml", "requires.features[2]", 'requires "auth"'),
        ("features/editor/capsule.toml", "access.call[1]", 'does not provide service "suggest"'),
        (
            "features/spellcheck/capsule.toml",
            "requires.features[0]",
            "requires cycle: spellcheck -> dictionary -> exporter -> spellcheck",
        ),
        ("features/spellcheck/capsule.toml", "limits.memory", 'write "128MiB"'),
        ("features/dictionary/capsule.toml", "feature.version", "missing required key"),
        ("features/dictionary/capsule.toml", "feature.entry", 'entry attribute "app"'),
        ("features/dictionary/capsule.toml", "provides.services[1]", 'service name "add words"'),
        ("features/exporter/capsule.toml", "feature.version", 'version "2.0.beta"'),
        ("features/exporter/capsule.toml", "feature.entry", 'entry module "export"'),
        (
            "features/exporter/capsule.toml",
            "access.subscribe[1]",
            '"spell.corrected" matches no topic',
        ),
        ("features/plugin/capsule.toml", "access.fs[0].path", "must not contain '..'"),
        ("features/plugin/capsule.toml", "access.net[0]", "is not approved: [policy.plugin]"),
        ("features/plugin/capsule.toml", "permissions", "unknown table [permissions]"),
        ("features/plugin/capsule.toml", "limits.pids", 'found string "4"'),
        ("features/thesaurus/capsule.toml", "", "TOML syntax error"),
    ],
)
def test_broken_messages_say_what_is_wrong(
    broken: CheckReport, file: str, key: str, fragment: str
) -> None:
    (problem,) = [p for p in broken.problems if p.path == f"demos/broken/{file}" and p.key == key]
    assert fragment in problem.message


def test_broken_keeps_what_could_be_built(broken: CheckReport) -> None:
    assert broken.app is not None
    assert broken.app.name == "notes"
    assert list(broken.features) == ["editor"]  # the only bundle whose own manifest is clean
    assert broken.start_order == ()  # editor requires features in a cycle or with errors
    assert [str(c) for c in broken.grants["editor"].capabilities] == [
        "icc:call:spellcheck.check",
        "icc:call:spellcheck.suggest",
        "icc:call:exporter.export",
        "icc:publish:editor.changed",
        "fs:read,write:/notes/",
    ]
    assert sum(p.severity is Severity.WARNING for p in broken.problems) == 1
