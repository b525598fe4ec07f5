"""Token buckets of the icc ``rate`` limit, on trio's MockClock (no containers)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from capsule._broker._rates import MAX_TARGETS, rates_for
from capsule._tokens._caps import Action, parse_capability


def test_a_token_without_rates_has_no_buckets() -> None:
    caps = (parse_capability("icc:call:a.b"), parse_capability("fs:read:/data/"))
    assert rates_for(caps) is None


@pytest.mark.trio
async def test_a_full_bucket_then_one_message_per_refill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cap = parse_capability("icc:call:a.b?rate=4")
    rates = rates_for((cap,), clock=trio.current_time)
    assert rates is not None
    assert [rates.over(Action.ICC_CALL, "a.b") for _ in range(5)] == [None] * 4 + [cap]
    await trio.sleep(0.2)  # 0.8 of a token
    assert rates.over(Action.ICC_CALL, "a.b") == cap
    await trio.sleep(0.05)  # a whole one now
    assert rates.over(Action.ICC_CALL, "a.b") is None
    assert rates.over(Action.ICC_CALL, "a.b") == cap
    await trio.sleep(60)  # never more than a second's worth
    assert [rates.over(Action.ICC_CALL, "a.b") for _ in range(5)] == [None] * 4 + [cap]


@pytest.mark.trio
async def test_a_capability_without_rate_that_covers_the_target_is_never_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rates = rates_for(
        (parse_capability("icc:call:a.*"), parse_capability("icc:call:a.b?rate=1")),
        clock=trio.current_time,
    )
    assert rates is not None
    assert [rates.over(Action.ICC_CALL, "a.b") for _ in range(100)] == [None] * 100


@pytest.mark.trio
async def test_each_covering_capability_is_charged_in_turn_and_rate_zero_allows_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wide = parse_capability("icc:publish:s.*?rate=2")
    narrow = parse_capability("icc:publish:s.x?rate=1")
    never = parse_capability("icc:publish:t.x?rate=0")
    rates = rates_for((narrow, wide, never), clock=trio.current_time)
    assert rates is not None
    got = [rates.over(Action.ICC_PUBLISH, "s.x") for _ in range(4)]
    assert got == [None, None, None, narrow]  # 1 from narrow, 2 from wide
    assert rates.over(Action.ICC_PUBLISH, "s.y") == wide  # wide is empty for s.y too
    assert rates.over(Action.ICC_PUBLISH, "t.x") == never
    assert rates.over(Action.ICC_CALL, "s.x") is None  # no call capability: the grant decides


@pytest.mark.trio
async def test_the_per_target_memo_stays_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cap = parse_capability("icc:publish:s.*?rate=1000000")
    rates = rates_for((cap,), clock=trio.current_time)
    assert rates is not None
    for index in range(3 * MAX_TARGETS):
        assert rates.over(Action.ICC_PUBLISH, f"s.t{index}") is None
    assert len(rates._covering) <= MAX_TARGETS
