"""app.toml and the checks across features: bundles, requires, routes, policies, volumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule._manifest import App, Severity, check_app, load_app
from capsule.errors import ConfigError
from tests.capsule.manifest_helpers import app_toml, build, feature, make_app, one, only


def test_a_clean_app(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "editor": '[requires]\nfeatures = ["spell"]\n[access]\ncall = ["spell.check"]\n',
            "spell": '[provides]\nservices = ["check"]\n',
        },
        '[policy.editor]\ncall = ["spell.*"]\n',
    )
    report = check_app(root)
    assert report.problems == ()
    assert report.ok
    assert report.app is not None
    assert (report.app.name, report.app.strategy) == ("demo", "one_for_one")
    assert report.app.features == ("features/editor", "features/spell")
    assert list(report.features) == ["editor", "spell"]
    assert report.start_order == ("spell", "editor")
    app = load_app(root)
    assert isinstance(app, App)
    assert app.root == tmp_path
    assert app.start_order == ("spell", "editor")
    assert [str(c) for c in app.grants["editor"].capabilities] == ["icc:call:spell.check"]
    assert app.grants["spell"].capabilities == ()
    assert [(r.kind, r.source, r.target, r.name) for r in app.routes] == [
        ("call", "editor", "spell", "check")
    ]


def test_start_order_breaks_ties_by_the_listed_order(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "e": '[requires]\nfeatures = ["b", "c"]\n',
            "d": "",
            "c": '[requires]\nfeatures = ["a"]\n',
            "b": "",
            "a": "",
        },
    )
    assert load_app(root).start_order == ("d", "b", "a", "c", "e")


def test_missing_app_toml_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    report = check_app(tmp_path)
    problem = only(report)
    assert problem.path == f"{tmp_path.as_posix()}/app.toml"
    assert "no app.toml" in problem.message
    assert report.app is None
    with pytest.raises(ConfigError, match=r"no app\.toml"):
        load_app(tmp_path)


def test_app_toml_syntax_error(tmp_path: Path) -> None:
    build(tmp_path, {"app.toml": '[app]\nname = "x"\nfeatures = ["a",\n'})
    problem = only(check_app(tmp_path))
    assert problem.message.startswith("TOML syntax error")
    assert problem.line == 4


@pytest.mark.parametrize(
    ("body", "key", "line", "fragment"),
    [
        ('[app]\nname = "x"\n', "app.features", 1, "missing required key app.features"),
        ('[app]\nname = "x"\nfeatures = []\n', "app.features", 3, "at least one feature bundle"),
        ('[app]\nname = "x"\nfeatures = "a"\n', "app.features", 3, "expected an array"),
        ('[app]\nname = "x"\nfeatures = [""]\n', "app.features[0]", 3, "bundle directory is empty"),
        ('[app]\nfeatures = []\nname = "X"\n', "app.name", 3, 'name "X" is not valid'),
        (
            '[app]\nname = "x"\nfeatures = []\nstrategy = "one-for-all"\n',
            "app.strategy",
            4,
            '(did you mean "one_for_all"?)',
        ),
        (
            '[app]\nname = "x"\nfeatures = []\nstratgy = "a"\n',
            "app.stratgy",
            4,
            'unknown key "stratgy"',
        ),
        ('name = "x"\n', "app", None, "missing required table [app]"),
        (
            '[app]\nname = "x"\nfeatures = []\n[policies]\n',
            "policies",
            4,
            "unknown table [policies]",
        ),
        (
            '[app]\nname = "x"\nfeatures = []\n[volumes]\nWords = "."\n',
            "volumes.Words",
            5,
            "volume name",
        ),
        (
            '[app]\nname = "x"\nfeatures = []\n[volumes]\nw = 1\n',
            "volumes.w",
            5,
            "expected a string",
        ),
        (
            '[app]\nname = "x"\nfeatures = []\n[policy]\nx = 1\n',
            "policy.x",
            5,
            "[policy.x] must be a table",
        ),
        (
            '[app]\nname = "x"\nfeatures = []\ntoken_ttl = 3600\n',
            "app.token_ttl",
            4,
            '(write the unit: "3600s")',
        ),
        (
            '[app]\nname = "x"\nfeatures = []\ntoken_ttl = "2d"\n',
            "app.token_ttl",
            4,
            "expected a duration",
        ),
        (
            '[app]\nname = "x"\nfeatures = []\ntoken_ttl = "500ms"\n',
            "app.token_ttl",
            4,
            'must be from 1s to 24h, found "500ms"',
        ),
        (
            '[app]\nname = "x"\nfeatures = []\ntoken_ttl = "25h"\n',
            "app.token_ttl",
            4,
            'must be from 1s to 24h, found "25h"',
        ),
    ],
)
def test_app_table_errors(
    tmp_path: Path, body: str, key: str, line: int | None, fragment: str
) -> None:
    build(tmp_path, {"app.toml": body})
    problem = one(check_app(tmp_path), key)
    assert problem.line == line
    assert problem.severity is Severity.ERROR
    assert fragment in problem.message


def test_valid_strategies(tmp_path: Path) -> None:
    for strategy in ("one_for_one", "one_for_all", "rest_for_one"):
        files = {"app.toml": app_toml(["a"], f'strategy = "{strategy}"\n'), **feature("a")}
        report = check_app(build(tmp_path / strategy, files))
        assert report.problems == ()
        assert report.app is not None
        assert report.app.strategy == strategy


def test_token_ttl(tmp_path: Path) -> None:
    for written, seconds in (
        ("", None),
        ('token_ttl = "90s"\n', 90.0),
        ('token_ttl = "2h"\n', 7200.0),
    ):
        files = {"app.toml": app_toml(["a"], written), **feature("a")}
        report = check_app(build(tmp_path / str(seconds), files))
        assert report.problems == ()
        assert report.app is not None
        assert report.app.token_ttl == seconds


def test_duplicate_feature_names(tmp_path: Path) -> None:
    files = {
        "app.toml": '[app]\nname = "x"\nfeatures = [\n  "features/a",\n  "copy",\n]\n',
        **feature("a"),
        "copy/capsule.toml": '[feature]\nname = "a"\nversion = "2"\nentry = "a:feature"\n',
        "copy/a.py": "feature = 1\n",
    }
    report = check_app(build(tmp_path, files))
    problem = only(report)
    assert (problem.key, problem.line) == ("app.features[1]", 5)
    assert problem.message == (
        'bundle "copy" declares feature "a", which bundle "features/a" (app.features[0]) '
        "already declares: feature names must be unique"
    )
    assert report.features["a"].version == "1.0.0"


def test_the_same_bundle_listed_twice(tmp_path: Path) -> None:
    files = {
        "app.toml": '[app]\nname = "x"\nfeatures = ["features/a", "./features/a/"]\n',
        **feature("a"),
    }
    problem = only(check_app(build(tmp_path, files)))
    assert (problem.key, problem.line) == ("app.features[1]", 3)
    assert "is listed twice (also at app.features[0])" in problem.message


def test_missing_bundle_and_missing_capsule_toml(tmp_path: Path) -> None:
    files = {
        "app.toml": app_toml(["gone", "empty", "file"]),
        "features/empty/empty.py": "feature = 1\n",
        "features/file": "not a directory\n",
    }
    report = check_app(build(tmp_path, files))
    assert "does not exist" in one(report, "app.features[0]").message
    assert "no capsule.toml in bundle" in one(report, "app.features[1]").message
    assert "is not a directory" in one(report, "app.features[2]").message
    assert len(report.problems) == 3


def test_requires_unknown_feature(tmp_path: Path) -> None:
    root = make_app(tmp_path, {"a": '[requires]\nfeatures = ["b", "spel"]\n', "spell": ""})
    report = check_app(root)
    problem = one(report, "requires.features[0]", file="features/a/capsule.toml")
    assert problem.line == 6
    assert problem.message == (
        'requires "b", but the app has no feature of that name; its features: a, spell'
    )
    assert '(did you mean "spell"?)' in one(report, "requires.features[1]").message
    assert report.start_order == ("spell",)


def test_requires_cycle_is_printed(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "x": "",
            "a": '[requires]\nfeatures = ["x", "b"]\n',
            "b": '[requires]\nfeatures = ["c"]\n',
            "c": '[requires]\nfeatures = ["a"]\n',
            "d": '[requires]\nfeatures = ["c"]\n',
        },
    )
    report = check_app(root)
    problem = only(report)
    assert problem.path.endswith("features/a/capsule.toml")
    assert (problem.key, problem.line) == ("requires.features[1]", 6)
    assert problem.message.startswith("requires cycle: a -> b -> c -> a; ")
    assert report.start_order == ("x",)
    assert set(report.features) == {"x", "a", "b", "c", "d"}


def test_a_feature_requiring_itself(tmp_path: Path) -> None:
    report = check_app(make_app(tmp_path, {"a": '[requires]\nfeatures = ["a"]\n'}))
    assert only(report).message.startswith("requires cycle: a -> a;")


def test_unprovided_services(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "caller": """\
                [access]
                call = ["svc.lookup", "svc.nope", "bare.*", "ghost.x", "ghost.*", "svc.*"]
                """,
            "svc": '[provides]\nservices = ["lookup", "look"]\n',
            "bare": "",
        },
        '[policy.caller]\ncall = ["svc.*", "bare.*", "ghost.*"]\n',
    )
    report = check_app(root)
    where = "features/caller/capsule.toml"
    assert one(report, "access.call[1]", file=where).message == (
        'call "svc.nope": feature "svc" does not provide service "nope"; it provides: lookup, look'
    )
    assert (
        one(report, "access.call[2]").message
        == 'call "bare.*": feature "bare" provides no services'
    )
    assert 'the app has no feature "ghost"' in one(report, "access.call[3]").message
    assert 'the app has no feature "ghost"' in one(report, "access.call[4]").message
    assert len(report.problems) == 4
    assert all(p.line == 6 for p in report.problems)


def test_subscriptions_nobody_publishes_are_warnings(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "pub": '[provides]\ntopics = ["spell.checked"]\n[access]\npublish = ["spell.*"]\n',
            "sub": '[access]\nsubscribe = ["spell.checked", "spell.*", "spell.other", "x.*"]\n',
        },
        '[policy.pub]\npublish = ["spell.*"]\n[policy.sub]\nsubscribe = ["spell.*", "x.*"]\n',
    )
    report = check_app(root)
    assert [p.key for p in report.problems] == ["access.subscribe[2]", "access.subscribe[3]"]
    assert all(p.severity is Severity.WARNING for p in report.problems)
    assert report.ok
    assert "published topics: spell.checked" in report.problems[0].message
    load_app(root)  # warnings never raise


def test_policy_for_a_feature_not_in_the_app(tmp_path: Path) -> None:
    root = make_app(tmp_path, {"spell": ""}, "[policy.spel]\ncall = []\n")
    problem = only(check_app(root))
    assert (problem.key, problem.line) == ("policy.spel", 4)
    assert '(did you mean "spell"?)' in problem.message


def test_unreadable_bundles_do_not_cause_follow_up_errors(tmp_path: Path) -> None:
    files = {
        "app.toml": app_toml(["a", "broken"], '[policy.broken]\ncall = ["a.x"]\n'),
        **feature("a", '[requires]\nfeatures = ["broken"]\n[access]\ncall = ["broken.run"]\n'),
        "features/broken/capsule.toml": "[feature\n",
    }
    report = check_app(build(tmp_path, files))
    keys = [(p.path.rsplit("/", 2)[-2], p.key) for p in report.problems]
    assert keys == [("a", "access.call[0]"), ("broken", "")]
    assert "not approved" in report.problems[0].message


@pytest.mark.parametrize(
    ("volumes", "key", "fragment"),
    [
        ('words = "missing"\n', "volumes.words", 'volume directory "missing" does not exist'),
        ('words = "file.txt"\n', "volumes.words", "is not a directory"),
        ('words = ""\n', "volumes.words", "volume directory is empty"),
    ],
)
def test_volume_directories_must_exist(
    tmp_path: Path, volumes: str, key: str, fragment: str
) -> None:
    files = {
        "app.toml": app_toml(["a"], "[volumes]\n" + volumes),
        **feature("a"),
        "file.txt": "x\n",
    }
    problem = only(check_app(build(tmp_path, files)))
    assert (problem.key, problem.line) == (key, 5)
    assert fragment in problem.message


def test_volumes_may_live_outside_the_app_dir(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    files = {"app.toml": app_toml(["a"], '[volumes]\nw = "../shared"\n'), **feature("a")}
    report = check_app(build(tmp_path / "app", files))
    assert report.problems == ()
    assert report.volumes["w"] == tmp_path / "shared"


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        (
            '{ path = "/d", volume = "nope" }',
            "policy.a.fs[0].volume",
            'volume "nope" is not defined',
        ),
        ('{ path = "/d", volume = "word" }', "policy.a.fs[0].volume", '(did you mean "words"?)'),
        (
            '{ path = "/d", volume = "words/none" }',
            "policy.a.fs[0].volume",
            '"none" is not a directory',
        ),
        ('{ path = "/d", volume = "words/../x" }', "policy.a.fs[0].volume", "must not contain"),
        ('{ path = "/d", volume = "Words" }', "policy.a.fs[0].volume", "expected a volume name"),
        ('{ path = "/d" }', "policy.a.fs[0].volume", "missing required key policy.a.fs[0].volume"),
        ('{ path = "d", volume = "words" }', "policy.a.fs[0].path", "must be absolute"),
        (
            '{ path = "/d", volume = "words", quota = "1MiB" }',
            "policy.a.fs[0].quota",
            "writable views only",
        ),
        (
            '{ path = "/d", volume = "words", mode = "rw", quota = "1MB" }',
            "policy.a.fs[0].quota",
            'write "1MiB"',
        ),
        (
            '{ path = "/d", volume = "words", mode = "rw", quota = 0 }',
            "policy.a.fs[0].quota",
            "more than 0",
        ),
        (
            '{ path = "/d", volume = "words", size = 1 }',
            "policy.a.fs[0].size",
            'unknown key "size"',
        ),
        (
            '{ path = "/d", volume = "words", mode = "private" }',
            "policy.a.fs[0].volume",
            "remove volume",
        ),
        (
            '{ path = "/d", volume = "words", inodes = 10 }',
            "policy.a.fs[0].inodes",
            "writable views only",
        ),
        (
            '{ path = "/d", mode = "private", inodes = 0 }',
            "policy.a.fs[0].inodes",
            "must be from 1",
        ),
        (
            '{ path = "/d", mode = "private", inodes = "many" }',
            "policy.a.fs[0].inodes",
            "expected an integer",
        ),
        (
            '{ path = "/d", volume = "words", mode = "overlay" }',
            "policy.a.fs[0].mode",
            '"ro", "rw", "cow", "private"',
        ),
        ('{ path = "/d", mode = "cow" }', "policy.a.fs[0].volume", "missing required key"),
    ],
)
def test_policy_fs_entries(tmp_path: Path, entry: str, key: str, fragment: str) -> None:
    files = {
        "app.toml": app_toml(["a"], f'[volumes]\nwords = "w"\n[policy.a]\nfs = [{entry}]\n'),
        **feature("a"),
        "w/sub/.keep": "",
    }
    problem = only(check_app(build(tmp_path, files)))
    assert (problem.key, problem.line) == (key, 7)
    assert fragment in problem.message


def test_load_app_raises_with_every_problem(tmp_path: Path) -> None:
    files = {"app.toml": app_toml(["a", "b"], "stratgy = 1\n"), **feature("a", "[x]\n")}
    with pytest.raises(ConfigError) as caught:
        load_app(build(tmp_path, files))
    error = caught.value
    assert (error.key, error.line) == ("app.features[1]", 3)
    assert error.path == f"{tmp_path.as_posix()}/app.toml"
    assert [p.key for p in error.problems] == ["app.features[1]", "app.stratgy", "x"]


def test_problem_paths_follow_the_path_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_app(tmp_path / "app", {"a": "[x]\n"})
    monkeypatch.chdir(tmp_path)
    problem = only(check_app("app"))
    assert problem.path == "app/features/a/capsule.toml"
    assert problem.location == "app/features/a/capsule.toml:5"
    assert str(problem) == (
        "error app/features/a/capsule.toml:5 [x] unknown table [x]; valid tables: feature, "
        "provides, requires, access, limits, restart"
    )


def test_absolute_bundle_paths(tmp_path: Path) -> None:
    bundle = tmp_path / "elsewhere" / "a"
    build(
        bundle.parent.parent,
        {f"elsewhere/{k.removeprefix('features/')}": v for k, v in feature("a", "[x]\n").items()},
    )
    build(
        tmp_path / "app", {"app.toml": f'[app]\nname = "x"\nfeatures = ["{bundle.as_posix()}"]\n'}
    )
    problem = only(check_app(tmp_path / "app"))
    assert problem.path == f"{bundle.as_posix()}/capsule.toml"
    assert problem.key == "x"
