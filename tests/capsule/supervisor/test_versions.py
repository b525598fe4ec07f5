"""The supervisor keeps a version history in its state directory and runs what it names.

Real bundles on disk (not inline code), real containers: each answers with the version
its own module was written as, so what runs is judged by what the container says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import trio

from capsule import FeatureError, open_supervisor
from capsule._supervisor._history import History
from tests.capsule.manifest_helpers import build

MODULE = '''"""Answers with the version it was written as."""

from capsule.feature import Feature

feature = Feature()


@feature.service("version")
async def version(ctx, request):
    return "{version}"
'''


def _bundle(directory: Path, version: str, *, said: str | None = None) -> Path:
    """A bundle of feature ``greet`` at ``version`` whose service says ``said``."""
    build(
        directory,
        {
            "capsule.toml": (
                f'[feature]\nname = "greet"\nversion = "{version}"\nentry = "greet:feature"\n'
                '[provides]\nservices = ["version"]\n'
                '[limits]\nmemory = "64MiB"\npids = 16\ntmp = "1MiB"\n'
            ),
            "greet.py": MODULE.format(version=said or version),
        },
    )
    return directory


def _app(root: Path) -> Path:
    (root / "app.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "app.toml").write_text('[app]\nname = "versions"\nfeatures = ["features/greet"]\n')
    _bundle(root / "features/greet", "1.0.0")
    return root


async def _runs(root: Path, state: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """Open the app once: what greet says it is, and its history as (event, version, bundle)."""
    with trio.fail_after(30):
        async with open_supervisor(
            root, state_dir=state, audit=state.parent / "audit.jsonl"
        ) as sup:
            said = await sup.call("greet", "version")
            return said, [(r.event, r.version, r.bundle) for r in sup.versions("greet")]


@pytest.mark.trio
async def test_a_start_is_recorded_once_per_version_not_per_restart(tmp_path: Path) -> None:
    root, state = _app(tmp_path / "app"), tmp_path / "state"
    own = str(root / "features/greet")
    with trio.fail_after(30):
        async with open_supervisor(root, state_dir=state, audit=tmp_path / "audit.jsonl") as sup:
            assert await sup.call("greet", "version") == "1.0.0"
            await sup.restart("greet")
            assert await sup.call("greet", "version") == "1.0.0"
            records = sup.versions("greet")
            assert [(r.event, r.version, r.bundle) for r in records] == [("started", "1.0.0", own)]
            with pytest.raises(FeatureError, match="is not part of app 'versions'"):
                sup.versions("nope")
    assert await _runs(root, state) == ("1.0.0", [("started", "1.0.0", own)])


@pytest.mark.trio
async def test_an_update_that_passed_probation_runs_again_after_a_restart(tmp_path: Path) -> None:
    root, state = _app(tmp_path / "app"), tmp_path / "state"
    own = str(root / "features/greet")
    await _runs(root, state)
    update = _bundle(tmp_path / "bundles/greet-1.1", "1.1.0")
    History(state).record("greet", "1.1.0", update, "updated")
    said, history = await _runs(root, state)
    assert said == "1.1.0"
    assert history == [("started", "1.0.0", own), ("updated", "1.1.0", str(update))]
    # the app's own bundle moves on: it wins over the earlier update, and is recorded
    _bundle(root / "features/greet", "1.2.0")
    said, history = await _runs(root, state)
    assert said == "1.2.0"
    assert history[-1] == ("started", "1.2.0", own)


@pytest.mark.trio
@pytest.mark.parametrize("damage", ["gone", "version", "refused"])
async def test_a_history_bundle_that_cannot_run_falls_back_to_the_apps(
    tmp_path: Path, damage: str
) -> None:
    root, state = _app(tmp_path / "app"), tmp_path / "state"
    own = str(root / "features/greet")
    await _runs(root, state)
    update = _bundle(tmp_path / "bundles/greet-1.1", "1.1.0")
    History(state).record("greet", "1.1.0", update, "updated")
    if damage == "gone":
        (update / "capsule.toml").unlink()
        expected = "no capsule.toml in bundle"
    elif damage == "version":
        _bundle(update, "1.1.5")
        expected = "1.1.5"
    else:  # it asks for something app.toml does not approve
        toml = update / "capsule.toml"
        toml.write_text(toml.read_text() + '[access]\nnet = ["127.0.0.1:80"]\n')
        expected = "is not approved"
    with structlog.testing.capture_logs() as logs:
        said, history = await _runs(root, state)
    assert said == "1.0.0"
    (warning,) = [e for e in logs if e["log_level"] == "warning" and "history" in e["event"]]
    assert warning["feature"] == "greet"
    assert warning["bundle"] == str(update)
    assert warning["app_bundle"] == own
    assert expected in str(warning.get("error", warning.get("found"))), warning
    assert history[-1] == ("started", "1.0.0", own)  # what runs is current again


@pytest.mark.trio
async def test_a_corrupt_history_is_logged_and_the_app_runs(tmp_path: Path) -> None:
    root, state = _app(tmp_path / "app"), tmp_path / "state"
    state.mkdir()
    (state / "history.jsonl").write_text("{oops\n")
    with structlog.testing.capture_logs() as logs:
        said, history = await _runs(root, state)
    assert said == "1.0.0"
    (error,) = [e for e in logs if e["event"] == "version history is corrupt"]
    assert (error["path"], error["line"]) == (str(state / "history.jsonl"), 1)
    assert error["log_level"] == "error"
    assert len(list(state.glob("history.jsonl.bad-*"))) == 1
    assert history == [("started", "1.0.0", str(root / "features/greet"))]
