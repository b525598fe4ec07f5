"""Plugins installed into a running app and removed from it, with real containers: calls from
the host and from another container, the service events, approval and refusal, drains,
failures that leave nothing behind, and plugins started again with the app.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

import capsule.testing
import fusefs
from capsule import (
    ApprovalRequiredError,
    ConfigError,
    FeatureError,
    FeatureStartError,
    FeatureUnavailableError,
    Supervisor,
)
from capsule._broker._host import Event, Subscription
from capsule._sandbox._cgroup_detect import detect
from capsule._sandbox._cgroup_files import run_name_for
from capsule._supervisor._rundir import runtime_base
from capsule.errors import UpdateRefusedError
from tests.capsule.supervisor.plugin_helpers import (
    BROKEN,
    counter,
    plugin_app,
    relay,
    write_plugin,
)

#: how long a call to a removed plugin may take to fail "at once"
AT_ONCE = 0.1


async def next_event(events: Subscription, *, limit: float = 5.0) -> Event:
    with trio.fail_after(limit):
        return await events.receive()


def audit_lines(path: Path, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line["event"] == event]


@pytest.mark.trio
async def test_add_call_from_host_and_container_then_remove(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    app.plugins = {
        "call": ["counter.*"],
        "fs": [{"path": "/state", "mode": "private", "quota": "1MiB"}],
    }
    bundle, relaying = counter(tmp_path), relay(tmp_path)
    with trio.fail_after(60):
        async with app.open() as sup, sup.subscribe("capsule.service.*") as events:
            handle = await sup.install(bundle, approve=True)
            assert handle.running
            assert list(sup.features()) == ["echo", "counter"]
            up = await next_event(events)
            assert (up.topic, up.sender) == ("capsule.service.up", "@capsule")
            assert up.payload == {"feature": "counter", "version": "1.0.0", "reason": "installed"}
            assert await sup.call("counter", "count", "one two three") == 3
            await sup.install(relaying, approve=True)
            assert (await next_event(events)).payload["feature"] == "relay"
            assert await sup.call("relay", "relay", "a b") == {"answer": 2}
            recorded = json.loads((app.root / "state" / "plugins.json").read_text())
            assert [p["name"] for p in recorded["plugins"]] == ["counter", "relay"]

            await sup.uninstall("counter")
            down = await next_event(events)
            assert down.topic == "capsule.service.down"
            assert down.payload == {"feature": "counter", "version": "1.0.0", "reason": "removed"}
            start = trio.current_time()
            with pytest.raises(FeatureUnavailableError, match="was removed at"):
                await sup.call("counter", "count", "x")
            assert trio.current_time() - start < AT_ONCE
            answer = await sup.call("relay", "relay", "a b")
            assert answer["error"] == "FeatureUnavailableError"
            assert "was removed at" in answer["message"]
            assert "counter" not in sup.features()
            assert [p.name for p in sup.plugins()] == ["relay"]
            history = [(r.event, r.version, r.bundle) for r in sup.versions("counter")]
            assert history == [
                ("installed", "1.0.0", str(bundle)),
                ("removed", "1.0.0", str(bundle)),
            ]
            recorded = json.loads((app.root / "state" / "plugins.json").read_text())
            assert [p["name"] for p in recorded["plugins"]] == ["relay"]
    assert capsule.testing.leftovers() == []
    added = audit_lines(app.root / "audit.jsonl", "plugin-add")
    assert [(a["feature"], a["decision"]) for a in added] == [
        ("counter", "install"),
        ("relay", "install"),
    ]
    assert added[0]["capabilities"] == ["fs:read,write:/state/?bytes=1048576"]
    removed = audit_lines(app.root / "audit.jsonl", "plugin-remove")
    assert [(r["feature"], r["decision"]) for r in removed] == [("counter", "remove")]


@pytest.mark.trio
async def test_a_widening_needs_approval_and_shows_the_diff(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    bundle = counter(tmp_path)
    with trio.fail_after(30):
        async with app.open() as sup:
            review = await sup.review_plugin(bundle)
            assert review.diff.widens
            assert review.diff.added == ("fs:read,write:/state/?bytes=1048576",)
            with pytest.raises(ApprovalRequiredError) as caught:
                await sup.install(bundle)
            assert caught.value.feature == "counter"
            assert "+ fs:read,write:/state/" in str(caught.value)
            assert "approve" in str(caught.value)
            assert "counter" not in sup.features()
            assert not (app.root / "state" / "plugins.json").exists()
            assert not (app.root / "state" / "private" / "counter").exists()
    assert capsule.testing.leftovers() == []
    refused = audit_lines(app.root / "audit.jsonl", "plugin-add")
    assert [(r["feature"], r["decision"]) for r in refused] == [("counter", "refuse")]


@pytest.mark.trio
async def test_a_plugin_asking_for_nothing_needs_no_approval(tmp_path: Path) -> None:
    app = plugin_app(tmp_path, plugins={})
    bundle = write_plugin(
        tmp_path,
        "plain",
        "from capsule.feature import Feature\n"
        "feature = Feature()\n"
        "@feature.service('hello')\n"
        "async def hello(ctx, who):\n"
        "    return f'hello {who}'\n",
        services=("hello",),
    )
    with trio.fail_after(30):
        async with app.open() as sup:
            await sup.install(bundle)
            assert await sup.call("plain", "hello", "you") == "hello you"


@pytest.mark.trio
async def test_requests_the_policy_does_not_approve_are_refused(tmp_path: Path) -> None:
    app = plugin_app(tmp_path, plugins={"call": ["echo.echo"]})
    bundle = write_plugin(
        tmp_path,
        "greedy",
        "from capsule.feature import Feature\nfeature = Feature()\n",
        services=(),
        access={"call": ["echo.echo"], "net": ["127.0.0.1:80"]},
    )
    with trio.fail_after(30):
        async with app.open() as sup:
            with pytest.raises(UpdateRefusedError) as caught:
                await sup.install(bundle, approve=True)
            assert caught.value.feature == "greedy"
            (reason,) = caught.value.reasons
            assert "capsule.toml:" in reason
            assert "access.net" in reason
            assert "greedy" not in sup.features()
            assert sup.plugins() == ()
            assert not (app.root / "state" / "plugins.json").exists()


@pytest.mark.trio
async def test_without_a_plugins_table_only_a_plugin_asking_nothing_installs(
    tmp_path: Path,
) -> None:
    app = plugin_app(tmp_path)
    app.plugins = None
    bundle = counter(tmp_path)
    with trio.fail_after(30):
        async with app.open() as sup:
            with pytest.raises(UpdateRefusedError, match=r"\[plugins\]"):
                await sup.install(bundle, approve=True)


@pytest.mark.trio
async def test_names_that_clash_are_refused(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    clash = write_plugin(
        tmp_path,
        "echo",
        "from capsule.feature import Feature\nfeature = Feature()\n",
        services=(),
        directory="other-echo",
    )
    bundle = counter(tmp_path)
    with trio.fail_after(30):
        async with app.open() as sup:
            with pytest.raises(ConfigError, match="already has a feature"):
                await sup.install(clash)
            await sup.install(bundle, approve=True)
            with pytest.raises(FeatureError, match="already installed as a plugin"):
                await sup.install(bundle, approve=True)
            assert await sup.call("echo", "echo", 1) == 1
            assert await sup.call("counter", "count", "a") == 1


@pytest.mark.trio
async def test_a_plugin_that_fails_to_start_leaves_nothing(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    bundle = write_plugin(
        tmp_path,
        "counter",
        BROKEN,
        services=("count",),
        access={"fs": [{"path": "/state", "mode": "rw"}]},
    )
    with trio.fail_after(30):
        async with app.open() as sup:
            with pytest.raises(FeatureStartError, match="cannot start: no configuration"):
                await sup.install(bundle, approve=True)
            assert "counter" not in sup.features()
            assert sup.plugins() == ()
            assert not (app.root / "state" / "plugins.json").exists()
            assert not (app.root / "state" / "private" / "counter").exists()
            with pytest.raises(FeatureError, match="not part of app"):
                await sup.call("counter", "count", "x")
            assert sup.statistics().features.keys() == {"echo"}
            # and a good bundle of the same name installs afterwards
            await sup.install(counter(tmp_path, directory="good"), approve=True)
            assert await sup.call("counter", "count", "a b") == 2
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_only_plugins_are_uninstalled(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    with trio.fail_after(30):
        async with app.open() as sup:
            with pytest.raises(FeatureError, match=r"feature of app\.toml, not a plugin"):
                await sup.uninstall("echo")
            with pytest.raises(FeatureError, match=r"not an installed plugin \(installed: none\)"):
                await sup.uninstall("nothing")
            assert sup.feature("echo").running
            await sup.install(counter(tmp_path), approve=True)
            await sup.uninstall("counter")
            with pytest.raises(FeatureUnavailableError, match="was removed at"):
                await sup.uninstall("counter")
            with pytest.raises(FeatureUnavailableError, match="was removed at"):
                sup.feature("counter")


@pytest.mark.trio
async def test_calls_in_flight_finish_within_the_drain(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    results: dict[str, Any] = {}

    async def call(key: str, seconds: float) -> None:
        try:
            results[key] = await sup.call("counter", "wait", seconds)
        except FeatureUnavailableError as exc:
            results[key] = exc

    with trio.fail_after(60):
        async with app.open() as sup:
            await sup.install(counter(tmp_path), approve=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "short", 0.3)
                await trio.sleep(0.05)  # let the call reach the container
                await sup.uninstall("counter", drain=5.0)
            assert results["short"] == 0.3
            await sup.install(counter(tmp_path), approve=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "long", 20.0)
                await trio.sleep(0.05)
                start = trio.current_time()
                await sup.uninstall("counter", drain=0.2)
                assert trio.current_time() - start < 5.0
            assert isinstance(results["long"], FeatureUnavailableError)
            assert "was removed before the call finished (0.2s drain)" in str(results["long"])
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_purge_deletes_private_storage_and_keeping_it_is_the_default(
    tmp_path: Path,
) -> None:
    app = plugin_app(tmp_path)
    private = app.root / "state" / "private" / "counter"
    with trio.fail_after(60):
        async with app.open() as sup:
            await sup.install(counter(tmp_path), approve=True)
            assert await sup.call("counter", "keep", "remember me") == ["note"]
            await sup.uninstall("counter")
            assert (private / "state" / "note").read_text(encoding="utf-8") == "remember me"
            await sup.install(counter(tmp_path), approve=True)
            await sup.uninstall("counter", purge=True)
            assert not private.exists()


@pytest.mark.trio
async def test_plugins_start_again_with_the_app(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    with trio.fail_after(60):
        async with app.open() as sup:
            await sup.install(counter(tmp_path), approve=True)
        async with app.open() as sup:
            assert list(sup.features()) == ["echo", "counter"]
            assert sup.feature("counter").running
            assert await sup.call("counter", "count", "a b c d") == 4
            (info,) = sup.plugins()
            assert (info.name, info.state, info.problem) == ("counter", "running", None)
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_recorded_plugin_the_policy_no_longer_approves_is_not_started(
    tmp_path: Path,
) -> None:
    app = plugin_app(tmp_path)
    with trio.fail_after(60):
        async with app.open() as sup:
            await sup.install(counter(tmp_path), approve=True)
        app.plugins = {"call": ["counter.*"]}  # no private storage any more
        async with app.open() as sup:
            assert list(sup.features()) == ["echo"]
            assert await sup.call("echo", "echo", 5) == 5
            (info,) = sup.plugins()
            assert info.state == "not started"
            assert info.problem is not None
            assert "[plugins]" in info.problem
            await sup.uninstall("counter")  # a recorded plugin that did not start goes too
            assert sup.plugins() == ()
    refused = [
        line
        for line in audit_lines(app.root / "audit.jsonl", "plugin-add")
        if line["decision"] == "refuse"
    ]
    assert [line["feature"] for line in refused] == ["counter"]
    assert "not started with the app" in refused[0]["reason"]


@pytest.mark.trio
async def test_a_corrupt_plugins_file_is_moved_aside_and_the_app_runs(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    state = app.root / "state"
    state.mkdir(parents=True)
    (state / "plugins.json").write_text('{"format": 1,\n "plugins": [\n', encoding="utf-8")
    with trio.fail_after(30):
        async with app.open() as sup:
            assert sup.feature("echo").running
            assert sup.plugins() == ()
    (aside,) = state.glob("plugins.json.corrupt-*")
    assert aside.read_text(encoding="utf-8").startswith('{"format": 1')
    (line,) = audit_lines(app.root / "audit.jsonl", "plugin-add")
    assert line["decision"] == "refuse"
    assert "plugins.json:3" in line["reason"]


async def _service_events(sup: Supervisor, tmp_path: Path) -> None:
    """Shared by the subscription test: install, crash-restart and remove a plugin."""
    await sup.install(counter(tmp_path), approve=True)
    await capsule.testing.crash(sup, "counter")
    await sup.feature("counter").wait_ready(10)
    await sup.uninstall("counter")


@pytest.mark.trio
async def test_containers_subscribed_to_service_events_see_them(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    watcher = app.feature(
        "watcher",
        policy={"subscribe": ["capsule.service.*"], "publish": ["capsule.*"]},
        limits={"memory": "64MiB", "pids": 16, "cpu": 0.2, "tmp": "1MiB"},
    )
    seen: list[Any] = []

    @watcher.on("capsule.service.up")
    async def _up(ctx: Any, event: Any) -> None:
        if event["feature"] == "counter":
            seen.append(["up", event])

    @watcher.on("capsule.service.down")
    async def _down(ctx: Any, event: Any) -> None:
        if event["feature"] == "counter":
            seen.append(["down", event])

    @watcher.service("seen")
    async def _seen(ctx: Any, request: Any) -> Any:
        return seen

    @watcher.service("forge")
    async def _forge(ctx: Any, request: Any) -> None:
        await ctx.publish("capsule.service.down", {"feature": "echo", "reason": "forged"})

    with trio.fail_after(60):
        async with app.open() as sup:
            await _service_events(sup, tmp_path)

            async def all_seen() -> list[Any]:
                got: list[Any] = await sup.call("watcher", "seen")
                return got

            with trio.fail_after(5):
                while len(await all_seen()) < 4:  # noqa: ASYNC110 - events arrive on their own
                    await trio.sleep(0.02)
            got = await all_seen()
            assert [(kind, e["feature"], e["reason"]) for kind, e in got] == [
                ("up", "counter", "installed"),
                ("down", "counter", "killed by SIGKILL; restarting"),
                ("up", "counter", "restarted"),
                ("down", "counter", "removed"),
            ]
            async with sup.subscribe("capsule.*") as events:
                await sup.call("watcher", "forge")  # a publish is not answered: it is dropped
                with pytest.raises(ConfigError, match="capsule's own"):
                    await sup.publish("capsule.service.up", {"feature": "echo"})
                with trio.move_on_after(0.2):
                    forged = await events.receive()
                    raise AssertionError(f"a forged event was delivered: {forged}")
    (denied,) = [
        line
        for line in audit_lines(app.root / "audit.jsonl", "publish")
        if line["decision"] == "deny"
    ]
    assert denied["feature"] == "watcher"
    assert denied["capability"] == "icc:publish:capsule.service.down"
    assert "published by capsule alone" in denied["reason"]


def _footprint(sup: Supervisor) -> dict[str, Any]:
    """What this process and its containers hold now: descriptors, memory, mounts beneath
    the run directory, cgroups of the run, view directories and container processes."""
    run = run_name_for(os.getpid())
    rundir = runtime_base() / run
    groups = sorted(
        str(path.relative_to(root))
        for root in (Path(r) / "capsule" / run for r in detect().roots.values())
        if root.exists()
        for path in root.rglob("*")
        if path.is_dir()
    )
    status = Path("/proc/self/status").read_text(encoding="ascii")
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_kib": rss,
        "mounts": sorted(point for point, _ in fusefs.fuse_mounts_beneath(str(rundir))),
        "cgroups": groups,
        "views": sorted(p.name for p in (rundir / "views").iterdir()),
        "pids": sorted(stats.pid for stats in sup.statistics().features.values() if stats.pid),
    }


async def _cycles(tmp_path: Path, count: int) -> None:
    app = plugin_app(tmp_path)
    bundle = counter(tmp_path)
    with trio.fail_after(30 + count * 2):
        async with app.open() as sup:
            for _ in range(2):  # the first cycles allocate what every later one reuses
                await sup.install(bundle, approve=True)
                await sup.uninstall("counter")
            gc.collect()
            before = _footprint(sup)
            held: list[str] = []
            for number in range(count):
                handle = await sup.install(bundle, approve=True)
                assert await sup.call("counter", "count", "a " * number) == number
                held += [token.text for token in handle.tokens()]
                await sup.uninstall("counter", purge=True)
            gc.collect()
            after = _footprint(sup)
            grown = after.pop("rss_kib") - before.pop("rss_kib")
            assert after == before
            assert grown < 4 * 1024, f"RSS grew by {grown} KiB over {count} cycles"
            verifier = sup._authority.verifier
            assert all(verifier.diagnose(text)[0] is None for text in held)
            assert sup._broker.delegations("counter") == 0
            assert sup.plugins() == ()
    assert capsule.testing.leftovers() == []


@pytest.mark.trio
async def test_a_hundred_install_and_uninstall_cycles_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    # about 10 s on two cores: kept in the default run
    await _cycles(tmp_path, 100)


@pytest.mark.trio
async def test_a_relative_state_dir_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = plugin_app(tmp_path)
    monkeypatch.chdir(tmp_path)
    with trio.fail_after(30):
        async with app.open(state_dir="relative-state") as sup:
            assert sup.state_dir == tmp_path / "relative-state"
            await sup.install(counter(tmp_path), approve=True)
            assert await sup.call("counter", "keep", "here") == ["note"]
    assert (tmp_path / "relative-state" / "plugins.json").is_file()
    assert (tmp_path / "relative-state" / "private" / "counter" / "state" / "note").is_file()


GIVER = """
from capsule.feature import Feature

feature = Feature()


@feature.service("give")
async def give(ctx, to):
    return await ctx.delegate("icc:call:echo.echo", to=to)
"""


@pytest.mark.trio
async def test_tokens_a_removed_plugin_delegated_are_revoked(tmp_path: Path) -> None:
    app = plugin_app(tmp_path, plugins={"call": ["echo.*"]})
    bundle = write_plugin(
        tmp_path, "giver", GIVER, services=("give",), access={"call": ["echo.echo"]}
    )
    with trio.fail_after(30):
        async with app.open() as sup:
            await sup.install(bundle, approve=True)
            given = await sup.call("giver", "give", "echo")
            echo = sup.feature("echo")

            def held() -> set[str]:
                return {token.token_id for token in echo.tokens()}

            with trio.fail_after(5):
                while given not in held():  # noqa: ASYNC110 - the recipient admits it on its own
                    await trio.sleep(0.01)
            own = {token.token_id for token in sup.feature("giver").tokens()}
            await sup.uninstall("giver")
            revoked = sup._authority.revocations
            assert all(bytes.fromhex(token_id) in revoked for token_id in {given, *own})
            assert given not in held()
            assert await sup.call("echo", "echo", "still here") == "still here"


@pytest.mark.trio
async def test_an_app_feature_whose_policy_allows_it_calls_a_plugin(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    caller = app.feature(
        "caller",
        policy={"call": ["counter.count"]},
        limits={"memory": "64MiB", "pids": 16, "cpu": 0.2, "tmp": "1MiB"},
    )

    @caller.service("ask")
    async def _ask(ctx: Any, text: Any) -> Any:
        try:
            return await ctx.call("counter", "count", text)
        except Exception as exc:  # the failure is the answer
            return type(exc).__name__

    (warning,) = capsule.check_app(app.write()).warnings
    assert warning.key == "access.call[0]"
    assert 'the app has no feature "counter"; only a plugin installed while it runs' in str(warning)
    with trio.fail_after(30):
        async with app.open() as sup:
            assert await sup.call("caller", "ask", "a b") == "FeatureError"  # not installed yet
            await sup.install(counter(tmp_path), approve=True)
            assert await sup.call("caller", "ask", "a b c") == 3
            await sup.uninstall("counter")
            assert await sup.call("caller", "ask", "a") == "FeatureUnavailableError"
    app.plugins = None  # without a [plugins] table the call names nothing that can exist
    with pytest.raises(ConfigError, match='the app has no feature "counter"'):
        capsule.load_app(app.write())


READER = """
from capsule.feature import Feature

feature = Feature()


@feature.service("read")
async def read(ctx, name):
    with open(f"/words/{name}", encoding="utf-8") as f:
        return f.read()
"""


def _held(directory: Path) -> int:
    """Descriptors of this process open on ``directory``."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(directory)
        except FileNotFoundError:  # the descriptor that listed the directory, closed since
            continue
    return found


@pytest.mark.trio
async def test_a_plugins_volume_directory_is_held_only_while_it_is_installed(
    tmp_path: Path,
) -> None:
    app = plugin_app(tmp_path, plugins={"fs": [{"path": "/words", "volume": "words/en"}]})
    words = app.volume("words", {"en/hello.txt": "hello", "fr/bonjour.txt": "bonjour"})
    bundle = write_plugin(
        tmp_path, "reader", READER, services=("read",), access={"fs": [{"path": "/words"}]}
    )
    with trio.fail_after(30):
        async with app.open() as sup:
            assert _held(words / "en") == 0
            await sup.install(bundle, approve=True)
            assert _held(words / "en") == 1  # opened once, beneath the held volume
            assert await sup.call("reader", "read", "hello.txt") == "hello"
            await sup.uninstall("reader")
            assert (_held(words), _held(words / "en")) == (0, 0)
            await sup.install(bundle, approve=True)  # and opened again for a new install
            assert await sup.call("reader", "read", "hello.txt") == "hello"


@pytest.mark.trio
async def test_a_cancelled_install_or_uninstall_is_never_left_half_done(tmp_path: Path) -> None:
    app = plugin_app(tmp_path)
    bundle = counter(tmp_path)
    listed = app.root / "state" / "plugins.json"

    def recorded() -> list[str]:
        if not listed.exists():
            return []
        return [p["name"] for p in json.loads(listed.read_text())["plugins"]]

    with trio.fail_after(60):
        async with app.open() as sup:
            outcomes = []
            for delay in (0.0, 0.02, 0.05, 0.1, 5.0):
                with trio.move_on_after(delay):
                    await sup.install(bundle, approve=True)
                installed = "counter" in sup.features()
                outcomes.append(installed)
                assert recorded() == (["counter"] if installed else [])
                assert [p.name for p in sup.plugins()] == recorded()
                if installed:
                    assert await sup.call("counter", "count", "a") == 1
                    with trio.move_on_after(delay):
                        await sup.uninstall("counter", drain=0.0)
                    assert "counter" not in sup.features()
                    assert recorded() == []
                    with pytest.raises(FeatureUnavailableError, match="was removed"):
                        await sup.call("counter", "count", "a")
            assert outcomes[0] is False  # cancelled before it started: nothing
            assert outcomes[-1] is True
    assert capsule.testing.leftovers() == []
