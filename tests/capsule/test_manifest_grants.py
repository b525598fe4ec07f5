"""Grants: each feature's requests intersected with the approvals, and the volumes behind views."""

from __future__ import annotations

from pathlib import Path

from capsule._manifest import FeatureGrant, MountGrant, Severity, check_app, load_app
from tests.capsule.manifest_helpers import make_app, one, only

VOLUMES = '[volumes]\nwords = "vol/words"\nstate = "vol/state"\n'
DIRS = {"vol/words/en/list.txt": "hello\n", "vol/state/.keep": ""}


def caps(root: Path, feature: str) -> list[str]:
    return [str(c) for c in load_app(root).grants[feature].capabilities]


def test_requests_are_granted_when_one_approval_covers_each(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "a": """\
                [access]
                call = ["b.lookup"]
                publish = ["spell.checked"]
                subscribe = ["editor.*"]
                net = ["LOCALHOST:8080"]
                """,
            "b": '[provides]\nservices = ["lookup"]\n',
            "editor": """\
                [provides]
                topics = ["editor.changed"]
                [access]
                publish = ["editor.changed"]
                """,
        },
        """\
        [policy.a]
        call = ["b.*"]
        publish = ["spell.*"]
        subscribe = ["editor.*"]
        net = ["localhost:8080"]
        [policy.editor]
        publish = ["editor.*"]
        """,
    )
    assert caps(root, "a") == [
        "icc:call:b.lookup",
        "icc:publish:spell.checked",
        "icc:subscribe:editor.*",
        "net:connect:localhost:8080",
    ]


def test_listen_requests_are_net_listen_capabilities(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nlisten = ["127.0.0.1:8080"]\nnet = ["[::1]:80?conns=2"]\n'},
        '[policy.a]\nlisten = ["127.0.0.1:8080"]\nnet = ["[::1]:80?conns=4"]\n',
    )
    assert check_app(root).problems == ()
    assert caps(root, "a") == ["net:connect:[::1]:80?conns=2", "net:listen:127.0.0.1:8080"]


def test_a_listen_request_needs_a_listen_approval(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nlisten = ["127.0.0.1:8080"]\n'},
        '[policy.a]\nnet = ["127.0.0.1:8080"]\n',
    )
    problem = only(check_app(root))
    assert problem.key == "access.listen[0]"
    assert "approves only net:connect:127.0.0.1:8080" in problem.message


def test_approvals_nobody_requested_are_not_granted(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\ncall = ["b.x"]\n', "b": '[provides]\nservices = ["x", "y"]\n'},
        '[policy.a]\ncall = ["b.x", "b.y"]\nnet = ["127.0.0.1:80"]\n[policy.b]\ncall = ["a.z"]\n',
    )
    assert check_app(root).problems == ()
    assert caps(root, "a") == ["icc:call:b.x"]
    assert caps(root, "b") == []


def test_a_wider_request_than_the_approval_is_refused(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\ncall = ["b.*"]\n', "b": '[provides]\nservices = ["x", "y"]\n'},
        '[policy.a]\ncall = ["b.x", "b.y"]\n',
    )
    report = check_app(root)
    problem = only(report)
    assert problem.path.endswith("features/a/capsule.toml")
    assert (problem.key, problem.line) == ("access.call[0]", 6)
    assert problem.message.startswith('call "b.*" (icc:call:b.*) is not approved: [policy.a] in ')
    assert "approve it there or remove the request" in problem.message
    assert report.grants["a"].capabilities == ()  # two narrow approvals never add up


def test_no_policy_table_means_nothing_is_granted(tmp_path: Path) -> None:
    root = make_app(tmp_path, {"a": '[access]\nnet = ["127.0.0.1:80"]\n'})
    problem = only(check_app(root))
    assert problem.key == "access.net[0]"
    assert "has no [policy.a] table, so a is granted nothing" in problem.message


def test_fs_views_are_backed_by_the_approved_volume(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {
            "a": """\
                [access]
                fs = [
                    { path = "/data/words", mode = "ro" },
                    { path = "/data/words/en" },
                    { path = "/state", mode = "rw" },
                ]
                """
        },
        VOLUMES
        + """\
        [policy.a]
        fs = [
            { path = "/data/words", volume = "words", mode = "ro" },
            { path = "/state", volume = "state", mode = "rw", quota = "64MiB" },
        ]
        """,
        extra=DIRS,
    )
    grant = load_app(root).grants["a"]
    assert [str(c) for c in grant.capabilities] == [
        "fs:read:/data/words/",
        "fs:read:/data/words/en/",
        "fs:read,write:/state/?bytes=67108864",
    ]
    assert grant.mounts == (
        MountGrant(view="/data/words", host=tmp_path / "vol/words", mode="ro", volume="words"),
        MountGrant(
            view="/data/words/en", host=tmp_path / "vol/words/en", mode="ro", volume="words/en"
        ),
        MountGrant(
            view="/state", host=tmp_path / "vol/state", mode="rw", volume="state", quota=64 << 20
        ),
    )


def test_private_and_copy_on_write_views(tmp_path: Path) -> None:
    """A feature asks for rw; the app backs it with private storage or a cow layer."""
    root = make_app(
        tmp_path,
        {
            "a": """\
                [access]
                fs = [
                    { path = "/cache", mode = "rw" },
                    { path = "/draft", mode = "rw" },
                    { path = "/peek", mode = "ro" },
                ]
                """
        },
        VOLUMES
        + """\
        [policy.a]
        fs = [
            { path = "/cache", mode = "private", quota = "1MiB", inodes = 100 },
            { path = "/draft", volume = "words", mode = "cow", inodes = 5 },
            { path = "/peek", volume = "words", mode = "cow" },
        ]
        """,
        extra=DIRS,
    )
    grant = load_app(root).grants["a"]
    assert [str(c) for c in grant.capabilities] == [
        "fs:read,write:/cache/?bytes=1048576&inodes=100",
        "fs:read,write:/draft/?inodes=5",
        "fs:read:/peek/",
    ]
    assert grant.mounts == (
        MountGrant(
            view="/cache",
            host=None,
            mode="rw",
            volume="",
            quota=1 << 20,
            inodes=100,
            storage="private",
        ),
        MountGrant(
            view="/draft",
            host=tmp_path / "vol/words",
            mode="rw",
            volume="words",
            inodes=5,
            storage="cow",
        ),
        # a read-only request under a cow approval is a plain read-only view of the volume
        MountGrant(view="/peek", host=tmp_path / "vol/words", mode="ro", volume="words"),
    )


def test_a_volume_subdirectory_in_the_policy(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/words" }]\n'},
        VOLUMES + '[policy.a]\nfs = [{ path = "/words", volume = "words/en" }]\n',
        extra=DIRS,
    )
    (mount,) = load_app(root).grants["a"].mounts
    assert (mount.view, mount.host, mount.volume) == (
        "/words",
        tmp_path / "vol/words/en",
        "words/en",
    )


def test_a_read_only_request_under_a_writable_approval_has_no_quota(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/state", mode = "ro" }]\n'},
        VOLUMES
        + '[policy.a]\nfs = [{ path = "/state", volume = "state", mode = "rw", quota = 1024 }]\n',
        extra=DIRS,
    )
    (mount,) = load_app(root).grants["a"].mounts
    assert (mount.mode, mount.quota) == ("ro", None)


def test_writing_where_only_reading_is_approved(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/data/words/en", mode = "rw" }]\n'},
        VOLUMES + '[policy.a]\nfs = [{ path = "/data/words", volume = "words" }]\n',
        extra=DIRS,
    )
    problem = only(check_app(root))
    assert (problem.key, problem.line) == ("access.fs[0]", 6)
    assert (
        'fs "/data/words/en" (rw) (fs:read,write:/data/words/en/) is not approved'
        in problem.message
    )
    assert 'approves "/data/words" ro only' in problem.message


def test_a_view_below_the_approval_must_exist_in_the_volume(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/data/words/fr" }]\n'},
        VOLUMES + '[policy.a]\nfs = [{ path = "/data/words", volume = "words" }]\n',
        extra=DIRS,
    )
    problem = only(check_app(root))
    assert problem.key == "access.fs[0]"
    assert '"fr" is not a directory inside it' in problem.message


def test_a_view_cannot_leave_its_volume_through_a_link(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/data/words/escape" }]\n'},
        VOLUMES + '[policy.a]\nfs = [{ path = "/data/words", volume = "words" }]\n',
        extra={**DIRS, "secret/key": "x\n"},
    )
    (tmp_path / "vol/words/escape").symlink_to(tmp_path / "secret")
    problem = only(check_app(root))
    assert problem.key == "access.fs[0]"
    assert check_app(root).grants["a"].mounts == ()


def test_a_missing_volume_is_reported_once(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/x" }, { path = "/y" }]\n'},
        '[volumes]\ngone = "nowhere"\n[policy.a]\nfs = [\n'
        '  { path = "/x", volume = "gone" },\n  { path = "/y", volume = "undeclared" },\n]\n',
    )
    report = check_app(root)
    assert [(p.key, p.severity) for p in report.problems] == [
        ("volumes.gone", Severity.ERROR),
        ("policy.a.fs[1].volume", Severity.ERROR),
    ]
    assert one(report, "policy.a.fs[1].volume").line == 9
    assert report.grants["a"].mounts == ()
    assert report.grants["a"].capabilities == ()


def test_a_broken_approval_is_reported_once(tmp_path: Path) -> None:
    root = make_app(
        tmp_path,
        {"a": '[access]\nfs = [{ path = "/d" }, { path = "/q" }]\n'},
        VOLUMES
        + '[policy.a]\nfs = [\n  { path = "/d", volume = "Words" },\n'
        + '  { path = "/q", volume = "words", quota = "1MiB" },\n]\n',
        extra=DIRS,
    )
    report = check_app(root)
    assert [(p.key, p.line) for p in report.problems] == [
        ("policy.a.fs[0].volume", 9),
        ("policy.a.fs[1].quota", 10),
    ]
    assert report.grants["a"] == FeatureGrant(feature="a")
