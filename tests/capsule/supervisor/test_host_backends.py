"""The supervisor in a host program on asyncio as well as on trio (through anyio)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import capsule.testing
from capsule import FeatureCrashedError, FeatureState, FeatureTimeoutError
from tests.capsule.supervisor.helpers import echo_app


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.mark.anyio
async def test_calls_crashes_and_timeouts_on_either_event_loop(
    tmp_path: Path, anyio_backend: str
) -> None:
    app = echo_app(tmp_path, ["a", "b"])
    with anyio.fail_after(20):
        async with app.open(stop_timeout=2) as sup:
            assert await sup.call("a", "echo", {"backend": anyio_backend}) == {
                "backend": anyio_backend
            }
            pid = sup.feature("a").statistics().pid

            with pytest.raises(FeatureCrashedError) as crashed:
                await sup.call("a", "fault", {"kind": "exit", "code": 6})
            assert crashed.value.exit_code == 6
            await sup.feature("a").wait_ready(10)
            assert sup.feature("a").statistics().pid != pid
            assert await sup.call("a", "echo", 1) == 1

            with pytest.raises(FeatureTimeoutError):
                await sup.call("a", "fault", {"kind": "hang"}, timeout=0.2)
            with anyio.move_on_after(0.2) as scope:
                await sup.call("b", "fault", {"kind": "hang"})
            assert scope.cancelled_caught
            assert sup.feature("a").statistics().calls_in_flight == 0
            assert sup.feature("b").statistics().calls_in_flight == 0

            await sup.restart("b")
            await sup.stop("a")
            assert sup.feature("a").state is FeatureState.STOPPED
            assert await sup.call("b", "echo", 2) == 2
    assert capsule.testing.leftovers() == []


def test_a_plain_asyncio_program(tmp_path: Path) -> None:
    """A synchronous program that runs its event loop with asyncio, no test plugin involved."""

    async def main() -> list[int]:
        app = echo_app(tmp_path, ["a"])
        with anyio.fail_after(20):
            async with app.open() as sup:
                return [await sup.call("a", "echo", n) for n in range(3)]

    assert anyio.run(main, backend="asyncio") == [0, 1, 2]
    assert capsule.testing.leftovers() == []
