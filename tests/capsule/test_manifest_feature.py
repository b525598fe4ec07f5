"""capsule.toml on its own: load_feature, every key's checks, and the problems' lines."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from capsule._manifest import (
    Access,
    FeatureManifest,
    FsRequest,
    Limits,
    RestartPolicy,
    load_feature,
)
from capsule.errors import ConfigError
from tests.capsule.manifest_helpers import ENTRY_MODULE, build

FULL = """\
[feature]
name = "spellcheck"
version = "1.2.0"
entry = "spellcheck:feature"
description = "Checks spelling"

[provides]
services = ["check"]
topics = ["spell.checked"]

[requires]
features = ["dictionary"]

[access]
call = ["dictionary.lookup"]
publish = ["spell.*"]
subscribe = ["editor.changed"]
fs = [{ path = "/data/words", mode = "ro" }, { path = "/state/", mode = "rw" }]
net = ["127.0.0.1:8080"]

[limits]
memory = "128MiB"
pids = 32
cpu = 0.5
open_files = 64
tmp = 1048576

[restart]
policy = "always"
max_restarts = 3
window = "30s"
backoff = "250ms..2s"
"""

HEAD = '[feature]\nname = "spellcheck"\nversion = "1.2.0"\nentry = "spellcheck:feature"\n'


def bundle(tmp_path: Path, toml: str, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "spellcheck"
    build(root, {"capsule.toml": toml, "spellcheck.py": ENTRY_MODULE, **(files or {})})
    return root


def load_error(tmp_path: Path, toml: str, files: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_feature(bundle(tmp_path, toml, files))
    return caught.value


def test_load_feature_reads_every_key(tmp_path: Path) -> None:
    manifest = load_feature(bundle(tmp_path, FULL))
    assert manifest == FeatureManifest(
        name="spellcheck",
        version="1.2.0",
        entry="spellcheck:feature",
        root=tmp_path / "spellcheck",
        description="Checks spelling",
        services=("check",),
        topics=("spell.checked",),
        requires=("dictionary",),
        access=Access(
            call=("dictionary.lookup",),
            publish=("spell.*",),
            subscribe=("editor.changed",),
            fs=(FsRequest(path="/data/words", mode="ro"), FsRequest(path="/state", mode="rw")),
            net=("127.0.0.1:8080",),
        ),
        limits=Limits(memory=128 << 20, pids=32, cpu=0.5, open_files=64, tmp=1 << 20),
        restart=RestartPolicy(
            policy="always", max_restarts=3, window=30.0, backoff_initial=0.25, backoff_max=2.0
        ),
    )
    assert (manifest.entry_module, manifest.entry_attribute) == ("spellcheck", "feature")
    assert [str(c) for c in manifest.access.capabilities()] == [
        "icc:call:dictionary.lookup",
        "icc:publish:spell.*",
        "icc:subscribe:editor.changed",
        "fs:read:/data/words/",
        "fs:read,write:/state/",
        "net:connect:127.0.0.1:8080",
    ]


def test_defaults_when_optional_tables_are_absent(tmp_path: Path) -> None:
    manifest = load_feature(bundle(tmp_path, HEAD))
    assert manifest.access == Access()
    assert manifest.access.capabilities() == ()
    assert manifest.limits == Limits(
        memory=256 << 20, pids=64, cpu=1.0, open_files=256, tmp=16 << 20
    )
    assert manifest.restart == RestartPolicy(
        policy="on-failure", max_restarts=5, window=60.0, backoff_initial=0.1, backoff_max=5.0
    )
    assert manifest.description == ""


def test_load_feature_accepts_the_capsule_toml_path(tmp_path: Path) -> None:
    root = bundle(tmp_path, HEAD)
    assert load_feature(root / "capsule.toml").name == "spellcheck"


def test_load_feature_without_capsule_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no capsule\.toml"):
        load_feature(tmp_path)


def test_config_error_carries_the_first_error_and_all_problems(tmp_path: Path) -> None:
    error = load_error(tmp_path, HEAD + '\n[limits]\nmemory = "1GB"\npids = 0\n')
    assert error.path is not None
    assert error.path.endswith("spellcheck/capsule.toml")
    assert (error.key, error.line) == ("limits.memory", 7)
    assert "and 1 more error" in error.message
    assert [(p.key, p.line) for p in error.problems] == [("limits.memory", 7), ("limits.pids", 8)]
    assert str(error).startswith(f"{error.path}:7 [limits.memory]: expected")


def test_toml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, HEAD + "\n[limits]\npids = = 3\n")
    assert error.line == 7
    assert error.key is None
    assert error.message.startswith("TOML syntax error: ")
    assert "(column 8)" in error.message


def test_unterminated_document_reports_a_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, HEAD + 'description = """never closed\n')
    assert error.message.startswith("TOML syntax error")
    assert error.line is not None


def test_not_utf8(tmp_path: Path) -> None:
    root = bundle(tmp_path, HEAD)
    (root / "capsule.toml").write_bytes(HEAD.encode() + b'description = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load_feature(root)
    assert caught.value.line == 5


def test_oversized_manifest_is_refused_before_parsing(tmp_path: Path) -> None:
    error = load_error(tmp_path, HEAD + "# " + "x" * (1 << 20) + "\n")
    assert "larger than" in error.message


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        (
            "[permissions]\nroot = true\n",
            "permissions",
            "unknown table [permissions]; valid tables: feature",
        ),
        ("[acess]\ncall = []\n", "acess", '(did you mean "access"?)'),
        (
            '[limits]\nmemroy = "1GiB"\n',
            "limits.memroy",
            'unknown key "memroy" in [limits] (did you mean "memory"?)',
        ),
        (
            '[provides]\nservices = "check"\n',
            "provides.services",
            'expected an array, found string "check"',
        ),
        (
            "[provides]\nservices = [1]\n",
            "provides.services[0]",
            "expected a string, found integer 1",
        ),
        (
            '[provides]\nservices = ["Check"]\n',
            "provides.services[0]",
            'service name "Check" is not valid',
        ),
        (
            '[provides]\ntopics = ["spell.*"]\n',
            "provides.topics[0]",
            'topic "spell.*" is not valid',
        ),
        (
            '[requires]\nfeatures = ["Dictionary"]\n',
            "requires.features[0]",
            'name "Dictionary" is not valid',
        ),
        (
            '[access]\ncall = ["dictionary"]\n',
            "access.call[0]",
            "call target must be feature.service or feature.*",
        ),
        (
            '[access]\npublish = ["Spell"]\n',
            "access.publish[0]",
            "topic must be dot-separated lower-case",
        ),
        ('[access]\nnet = ["example.com"]\n', "access.net[0]", "host:port"),
        ('[access]\nfs = ["/data"]\n', "access.fs[0]", "inline table like"),
        (
            '[access]\nfs = [{ mode = "ro" }]\n',
            "access.fs[0].path",
            "missing required key access.fs[0].path",
        ),
        ('[access]\nfs = [{ path = "data" }]\n', "access.fs[0].path", "must be absolute"),
        (
            '[access]\nfs = [{ path = "/data/../etc" }]\n',
            "access.fs[0].path",
            "must not contain '..'",
        ),
        ('[access]\nfs = [{ path = "/data//x" }]\n', "access.fs[0].path", "empty segments"),
        ('[access]\nfs = [{ path = "/" }]\n', "access.fs[0].path", "the root of the view"),
        (
            '[access]\nfs = [{ path = "/data", mode = "rx" }]\n',
            "access.fs[0].mode",
            '"rx" is not one of "ro", "rw"',
        ),
        (
            '[access]\nfs = [{ path = "/d", volume = "v" }]\n',
            "access.fs[0].volume",
            "a feature cannot choose its volume",
        ),
        (
            '[access]\nfs = [{ path = "/d" }, { path = "/d/", mode = "rw" }]\n',
            "access.fs[1].path",
            'mount point "/d" is listed twice',
        ),
        ('[limits]\nmemory = "128MB"\n', "limits.memory", 'write "128MiB"'),
        ('[limits]\nmemory = "8MiB"\n', "limits.memory", "must be at least 16MiB, found 8MiB"),
        (
            '[limits]\npids = "4"\n',
            "limits.pids",
            'expected an integer from 1 to 4194304, found string "4"',
        ),
        ("[limits]\npids = true\n", "limits.pids", "found boolean true"),
        (
            "[limits]\ncpu = 0\n",
            "limits.cpu",
            "must be a number more than 0 and at most 1024, found 0",
        ),
        (
            "[limits]\nopen_files = 3\n",
            "limits.open_files",
            "must be from 16 to 1048576, found 3",
        ),
        ('[limits]\ntmp = "1.5MiB"\n', "limits.tmp", 'found "1.5MiB"'),
        ('[restart]\npolicy = "on_failure"\n', "restart.policy", '(did you mean "on-failure"?)'),
        ("[restart]\nmax_restarts = -1\n", "restart.max_restarts", "must be from 0 to 1000"),
        ('[restart]\nwindow = "60"\n', "restart.window", '"N" or "N.N" + ms, s, m or h'),
        ('[restart]\nwindow = "0s"\n', "restart.window", "must be more than 0"),
        ('[restart]\nbackoff = "5s..1s"\n', "restart.backoff", "write the smaller first"),
    ],
)
def test_bad_values_are_reported_at_their_key_and_line(
    tmp_path: Path, extra: str, key: str, fragment: str
) -> None:
    error = load_error(tmp_path, HEAD + "\n" + extra)
    line = 7 if "." in key else 6  # the table header is line 6, its first key line 7
    assert (error.key, error.line) == (key, line), error
    assert fragment in error.message


@pytest.mark.parametrize(
    ("head", "key", "line", "fragment"),
    [
        (
            'version = "1"\nentry = "a:b"\n',
            "feature.name",
            1,
            'missing required key feature.name, e.g. name = "spellcheck"',
        ),
        (
            'name = "a"\nentry = "a:b"\n',
            "feature.version",
            1,
            "missing required key feature.version",
        ),
        ('name = "a"\nversion = "1"\n', "feature.entry", 1, "missing required key feature.entry"),
        (
            'name = "Spell"\nversion = "1"\nentry = "a:b"\n',
            "feature.name",
            2,
            'name "Spell" is not valid',
        ),
        ('name = "' + "a" * 64 + '"\nversion = "1"\nentry = "a:b"\n', "feature.name", 2, "1 to 63"),
        (
            'name = "a"\nversion = "1.0.beta"\nentry = "a:b"\n',
            "feature.version",
            3,
            'version "1.0.beta" is not valid',
        ),
        ('name = "a"\nversion = "01.0"\nentry = "a:b"\n', "feature.version", 3, "N[.N[.N]]"),
        (
            'name = "a"\nversion = 1\nentry = "a:b"\n',
            "feature.version",
            3,
            "expected a string, found integer 1",
        ),
        (
            'name = "a"\nversion = "1"\nentry = "a.b"\n',
            "feature.entry",
            4,
            "expected module:attribute",
        ),
        (
            'name = "a"\nversion = "1"\nentry = "a:b:c"\n',
            "feature.entry",
            4,
            "expected module:attribute",
        ),
        (
            'name = "a"\nversion = "1"\nentry = "a:b"\nauthor = "me"\n',
            "feature.author",
            5,
            'unknown key "author" in [feature]',
        ),
    ],
)
def test_feature_table_keys(tmp_path: Path, head: str, key: str, line: int, fragment: str) -> None:
    error = load_error(tmp_path, "[feature]\n" + head, {"a.py": "b = 1\n"})
    assert (error.key, error.line) == (key, line), error
    assert fragment in error.message


def test_missing_feature_table(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[provides]\nservices = ["x"]\n')
    assert (error.key, error.line) == ("feature", None)
    assert "missing required table [feature]" in error.message


@pytest.mark.parametrize(
    "version", ["0", "1", "1.2", "1.2.3", "1.2.3-rc.1", "10.0.0-alpha-2", "0.0.0-x.7.z.92"]
)
def test_valid_versions(tmp_path: Path, version: str) -> None:
    toml = HEAD.replace('"1.2.0"', f'"{version}"')
    assert load_feature(bundle(tmp_path, toml)).version == version


def test_published_topics_must_be_requested(tmp_path: Path) -> None:
    error = load_error(tmp_path, HEAD + '[provides]\ntopics = ["spell.checked"]\n')
    assert (error.key, error.line) == ("provides.topics[0]", 6)
    assert 'add "spell.checked" (or a pattern such as "spell.*") to access.publish' in error.message


def test_a_pattern_covers_published_topics(tmp_path: Path) -> None:
    toml = HEAD + '[provides]\ntopics = ["spell.checked"]\n[access]\npublish = ["spell.*"]\n'
    assert load_feature(bundle(tmp_path, toml)).topics == ("spell.checked",)


def test_repeated_entries_are_a_warning_not_an_error(tmp_path: Path) -> None:
    toml = HEAD + '[provides]\nservices = ["check", "check"]\n'
    assert load_feature(bundle(tmp_path, toml)).services == ("check",)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    toml = """\
    [feature]
    name = "Bad"
    version = "x"
    entry = "no such"

    [limits]
    memory = "1GB"
    cpu = -1

    [restart]
    window = "forever"

    [extra]
    """
    error = load_error(tmp_path, textwrap.dedent(toml))
    found = [(p.key, p.line) for p in error.problems]
    assert found == [
        ("feature.name", 2),
        ("feature.version", 3),
        ("feature.entry", 4),
        ("limits.memory", 7),
        ("limits.cpu", 8),
        ("restart.window", 11),
        ("extra", 13),
    ]
