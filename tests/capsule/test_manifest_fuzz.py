"""check_app never raises for manifest content, whatever the files hold."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsule._manifest import Severity, check_app
from tests.capsule.manifest_helpers import build

APP_LINES = [
    "[app]",
    'name = "demo"',
    "name = 1",
    'features = ["features/a", "features/b"]',
    'features = ["features/a", "features/a", "../x", "/abs", ""]',
    'strategy = "one_for_all"',
    "strategy = []",
    "[volumes]",
    'v = "vol"',
    'w = "missing"',
    "[policy.a]",
    "[policy.b]",
    "[policy.ghost]",
    'call = ["b.x", "b.*", "Bad"]',
    'publish = ["t.*"]',
    'subscribe = ["t.one", "t.*"]',
    'fs = [{ path = "/d", volume = "v", mode = "rw", quota = "1MiB" }]',
    'fs = [{ path = "/d/e", volume = "v/sub" }, { path = "x" }, 3]',
    'fs = [{ path = "/q", volume = "nope", mode = "ro", quota = 5 }]',
    'net = ["127.0.0.1:80", "bad"]',
    "[[app]]",
    "policy = 3",
]
FEATURE_LINES = [
    "[feature]",
    'name = "a"',
    'name = "b"',
    'name = "B"',
    'version = "1.0.0"',
    'version = "x"',
    'entry = "a:feature"',
    'entry = "b:feature"',
    "entry = 7",
    "[provides]",
    'services = ["x", "x", "Y"]',
    'topics = ["t.one", "t.*"]',
    "[requires]",
    'features = ["a", "b", "c"]',
    "[access]",
    'call = ["b.x", "a.*", "c.y", "b"]',
    'publish = ["t.one", "t.*"]',
    'subscribe = ["t.two", "u.*"]',
    'fs = [{ path = "/d" }, { path = "/d/e", mode = "rw" }, { path = "/d/../x" }, "s"]',
    'net = ["127.0.0.1:80", "[::1]:99999"]',
    "[limits]",
    'memory = "1MB"',
    "pids = 0",
    "cpu = 2.5",
    "[restart]",
    'backoff = "1s..1ms"',
    'window = "1d"',
    "[[feature]]",
    'limits = "x"',
]


def document(lines: list[str]) -> st.SearchStrategy[str]:
    noise = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
    line = st.one_of(st.sampled_from(lines), noise)
    return st.lists(line, max_size=14).map("\n".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document(APP_LINES), document(FEATURE_LINES), document(FEATURE_LINES))
def test_check_app_never_raises(app: str, first: str, second: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = build(
            Path(scratch),
            {
                "app.toml": app,
                "features/a/capsule.toml": first,
                "features/a/a.py": "feature = 1\n",
                "features/b/capsule.toml": second,
                "vol/sub/.keep": "",
            },
        )
        report = check_app(root)
        for problem in report.problems:
            assert problem.message
            assert problem.line is None or problem.line >= 1
        if report.ok:
            assert report.app is not None
        assert report.ok == all(p.severity is Severity.WARNING for p in report.problems)
