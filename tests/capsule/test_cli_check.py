"""``capsule check`` and ``capsule graph`` run as a user would: in a subprocess, from the repo."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.capsule.manifest_helpers import make_app
from tests.capsule.test_manifest_demos import planted

ROOT = Path(__file__).resolve().parents[2]


def capsule(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capsule", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_notes_is_clean() -> None:
    result = capsule("check", "demos/notes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("app notes  (demos/notes/app.toml)\n  strategy  one_for_one\n")
    order = [m.group(1) for m in re.finditer(r"^ +\d+\. (\S+) \S+  \(features/\S+\)$", out, re.M)]
    assert order == ["dictionary", "spellcheck", "editor", "exporter", "plugin"]
    assert "start    on demand, idle stop 1s\n" in out
    assert "   1. dictionary 0.9.1  (features/dictionary)\n" in out
    assert "provides services check, stats; topics spell.checked\n" in out
    assert re.search(r"fs:read:/data/words/ +<- volume words \(ro\)\n", out)
    assert re.search(
        r"fs:read,write:/state/\?bytes=16777216 +<- private storage \(rw, quota 16MiB\)",
        out,
    )
    assert re.search(r"fs:read:/notes/ +<- volume notes/public \(ro\)\n", out)
    assert "  event  editor.changed: editor -> spellcheck, plugin\n" in out
    assert "problems:" not in out
    assert out.endswith("ok: 5 features, 0 errors, 0 warnings\n")


def test_check_broken_lists_every_problem() -> None:
    result = capsule("check", "demos/broken")
    assert result.returncode == 1
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    problems = lines[lines.index("problems:") + 1 : -2]
    assert len(problems) == len(planted())
    for file, line, key, severity in planted():
        where = f"{file}:{line}" + (f" [{key}]" if key else "")
        prefix = f"{severity:<7} {where} "
        assert any(text.startswith(prefix) for text in problems), prefix
    assert lines[-1] == "failed: 23 errors, 1 warning"
    assert "Traceback" not in result.stdout


def test_check_json() -> None:
    result = capsule("check", "--format", "json", "demos/broken")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["summary"] == {"errors": 23, "warnings": 1, "ok": False}
    assert data["app"]["name"] == "notes"
    first = data["problems"][0]
    assert first == {
        "severity": "error",
        "path": "demos/broken/app.toml",
        "line": 12,
        "key": "app.features[5]",
        "message": first["message"],
    }
    clean = json.loads(capsule("check", "--format", "json", "demos/notes").stdout)
    assert clean["summary"] == {"errors": 0, "warnings": 0, "ok": True}
    assert clean["start_order"] == ["dictionary", "spellcheck", "editor", "exporter", "plugin"]
    plugin = next(f for f in clean["features"] if f["name"] == "plugin")
    assert plugin["capabilities"] == ["icc:subscribe:editor.changed", "fs:read:/notes/"]
    assert plugin["mounts"][0]["volume"] == "notes/public"
    assert plugin["limits"]["pids"] == 4


def test_warnings_pass_unless_strict(tmp_path: Path) -> None:
    make_app(
        tmp_path,
        {"a": '[access]\nsubscribe = ["nobody.says"]\n'},
        '[policy.a]\nsubscribe = ["nobody.*"]\n',
    )
    relaxed = capsule("check", str(tmp_path))
    assert relaxed.returncode == 0
    assert "\nwarning " in relaxed.stdout
    assert relaxed.stdout.endswith(
        "ok: 1 feature, 0 errors, 1 warning (--strict fails on warnings)\n"
    )
    strict = capsule("check", "--strict", str(tmp_path))
    assert strict.returncode == 1
    assert strict.stdout.endswith("failed: 0 errors, 1 warning (--strict)\n")


@pytest.mark.parametrize("command", ["check", "graph"])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("x")
    for app, reason in [
        (tmp_path / "nope", "does not exist"),
        (tmp_path, "has no app.toml"),
        (tmp_path / "file", "is not a directory"),
    ]:
        result = capsule(command, str(app))
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith(f"capsule {command}: error: {app} {reason}")


def test_unknown_option_is_a_usage_error() -> None:
    result = capsule("check", "--format", "yaml", "demos/notes")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# -- graph ----------------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(//[^\n]*)|("(?:[^"\\]|\\.)*")|(->|[\[\]{}=,;])|([A-Za-z_][A-Za-z0-9_]*))'
)


def parse_dot(
    text: str,
) -> tuple[str, dict[str, dict[str, str]], list[tuple[str, str, dict[str, str]]]]:
    """A strict reader for the DOT subset capsule writes: nodes, edges and their attributes."""
    tokens: list[str] = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        assert match is not None, f"bad DOT at {text[position:][:40]!r}"
        assert match.end() > position
        position = match.end()
        if match.group(1) is None:
            tokens.append(next(g for g in match.groups()[1:] if g is not None))

    def unquote(token: str) -> str:
        assert token.startswith('"'), token
        return re.sub(r'\\(["\\])', r"\1", token[1:-1])  # DOT unescapes only these two

    def attrs(at: int) -> tuple[dict[str, str], int]:
        found: dict[str, str] = {}
        assert tokens[at] == "["
        at += 1
        while tokens[at] != "]":
            name, eq, value = tokens[at : at + 3]
            assert eq == "="
            found[name] = unquote(value)
            at += 3
            if tokens[at] == ",":
                at += 1
        return found, at + 1

    assert tokens[0] == "digraph"
    assert tokens[2] == "{"
    assert tokens[-1] == "}"
    name = unquote(tokens[1])
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str, dict[str, str]]] = []
    at = 3
    while at < len(tokens) - 1:
        head = tokens[at]
        if head in ("graph", "node", "edge"):
            _, at = attrs(at + 1)
        elif tokens[at + 1] == "->":
            target = unquote(tokens[at + 2])
            found, at = attrs(at + 3)
            edges.append((unquote(head), target, found))
        else:
            found, at = attrs(at + 1)
            nodes[unquote(head)] = found
        assert tokens[at] == ";", tokens[at - 3 : at + 1]
        at += 1
    return name, nodes, edges


def test_graph_notes_is_valid_dot() -> None:
    result = capsule("graph", "demos/notes")
    assert result.returncode == 0, result.stderr
    name, nodes, edges = parse_dot(result.stdout)
    assert name == "notes"
    features = {n: a for n, a in nodes.items() if n.startswith("feature:")}
    assert {n: a["label"] for n, a in features.items()} == {
        "feature:dictionary": "dictionary\\n0.9.1",
        "feature:spellcheck": "spellcheck\\n1.2.0",
        "feature:exporter": "exporter\\n2.0.0\\n(on demand)",
        "feature:editor": "editor\\n1.0.0",
        "feature:plugin": "plugin\\n0.3.1",
    }
    assert {n for n in nodes if not n.startswith("feature:")} == {
        "volume:words",
        "volume:notes",
        "volume:exports",
        "private:dictionary",
        "net:127.0.0.1:8765",
    }
    for source, target, _ in edges:
        assert source in nodes
        assert target in nodes

    def labelled(source: str, target: str) -> set[str]:
        return {a["label"] for s, t, a in edges if (s, t) == (source, target)}

    requires = {(s, t) for s, t, a in edges if a.get("style") == "dashed"}
    assert requires == {
        ("feature:spellcheck", "feature:dictionary"),
        ("feature:editor", "feature:spellcheck"),
    }  # the exporter starts on demand, when the editor first calls it
    assert labelled("feature:editor", "feature:spellcheck") == {
        "requires",
        "check",
        "editor.changed",
    }
    assert labelled("feature:editor", "feature:plugin") == {"editor.changed"}
    assert labelled("feature:spellcheck", "feature:exporter") == {"spell.checked"}
    assert labelled("feature:spellcheck", "volume:words") == {"ro /data/words"}
    assert labelled("feature:plugin", "volume:notes") == {"ro /notes\\n(public/)"}
    assert labelled("feature:dictionary", "private:dictionary") == {"rw /state\\nquota 16MiB"}
    assert labelled("feature:exporter", "net:127.0.0.1:8765") == {"connect"}
    assert not labelled("feature:plugin", "net:127.0.0.1:8765")


def test_graph_quotes_names_safely(tmp_path: Path) -> None:
    make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/odd \\"name\\" dir" }]\n'},
        '[volumes]\nv = "v"\n[policy.a]\nfs = [{ path = "/odd \\"name\\" dir", volume = "v" }]\n',
        extra={"v/.keep": ""},
    )
    result = capsule("graph", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    _, _, edges = parse_dot(result.stdout)
    assert [a["label"] for _, t, a in edges if t == "volume:v"] == ['ro /odd "name" dir']


def test_graph_of_a_broken_app_draws_what_checks_cleanly() -> None:
    result = capsule("graph", "demos/broken")
    assert result.returncode == 1
    _, nodes, _ = parse_dot(result.stdout)
    assert set(nodes) == {"feature:editor", "volume:notes"}
    assert result.stderr.startswith("capsule graph: demos/broken has 23 errors;")
    assert result.stderr.count("\n") == 1


def test_check_shows_how_each_view_is_backed(tmp_path: Path) -> None:
    """Private storage and copy-on-write views are named as such, with their limits, in the
    text report, the JSON and the graph (private storage is a node of its own)."""
    root = make_app(
        tmp_path,
        {
            "a": '[access]\nfs = [{ path = "/cache", mode = "rw" }, '
            '{ path = "/draft", mode = "rw" }]\n'
        },
        '[volumes]\nwords = "words"\n[policy.a]\nfs = [\n'
        '  { path = "/cache", mode = "private", quota = "1MiB", inodes = 10 },\n'
        '  { path = "/draft", volume = "words", mode = "cow" },\n]\n',
        extra={"words/.keep": ""},
    )
    text = capsule("check", str(root))
    assert text.returncode == 0, text.stdout + text.stderr
    assert re.search(
        r"fs:read,write:/cache/\?bytes=1048576&inodes=10 +<- private storage "
        r"\(rw, quota 1MiB, 10 inodes\)",
        text.stdout,
    ), text.stdout
    assert re.search(r"fs:read,write:/draft/ +<- volume words \(cow\)", text.stdout), text.stdout
    report = json.loads(capsule("check", "--format", "json", str(root)).stdout)
    mounts = {m["view"]: m for f in report["features"] for m in f["mounts"]}
    assert mounts["/cache"]["storage"] == "private"
    assert mounts["/cache"]["host"] is None
    assert mounts["/draft"]["storage"] == "cow"
    graph = capsule("graph", str(root)).stdout
    assert "cow /draft" in graph
    assert '"feature:a" -> "private:a"' in graph


def test_graph_labels_network_edges_by_what_is_granted(tmp_path: Path) -> None:
    """A listen grant is drawn as listen, a connect grant as connect."""
    root = make_app(
        tmp_path,
        {"a": '[access]\nnet = ["127.0.0.1:8765"]\nlisten = ["127.0.0.1:9000"]\n'},
        '[policy.a]\nnet = ["127.0.0.1:8765"]\nlisten = ["127.0.0.1:9000"]\n',
    )
    graph = capsule("graph", str(root)).stdout
    assert '"feature:a" -> "net:127.0.0.1:8765" [label="connect"' in graph
    assert '"feature:a" -> "net:127.0.0.1:9000" [label="listen"' in graph
