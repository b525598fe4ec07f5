"""The broker's per-message work measured in this process, on a fake peer: the check of
each message, admission of a token, and matching a published topic against subscriptions.

Measures only: no containers, no supervisor.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

import msgspec
from _common import Job, Target, time_batches, time_each

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._broker._routes import Handle, Peer, Subscriber
from capsule._broker._topics import valid_call
from capsule.tokens import Action, KeyRing, TokenAuthority, compile_grant

TICK: Final = "bench.tick"
CHECK_TARGET: Final = Target(1.0)
ADMISSION_TARGET: Final = Target(100.0)
MATCH_TARGET: Final = Target(20.0)
CHECK_ROW: Final = "per-message check: Broker._check on a fake peer"
ADMISSION_ROW: Final = "admission: diagnose + compile_grant (ctk1 text, as _admit)"
MATCH_ROW: Final = "publish to a fresh topic, many subscriptions (Broker._deliver_event)"


class Sizes(Protocol):
    """The sample counts these jobs take (``_brokerbench.sizes.Sizes`` has them)."""

    check_batch: int
    check_samples: int
    check_warmup: int
    admissions: int
    admission_warmup: int
    subscriptions: int


def authorization_jobs(sizes: Sizes) -> list[Job]:
    """The broker's per-message check and admission, in this process, on a fake peer."""
    authority = TokenAuthority(KeyRing.generate())
    verifier = authority.verifier
    token = authority.mint("caller", ["icc:call:echo.echo", f"icc:publish:{TICK}"], ttl=3600)
    text = token.text
    claims = verifier.verify(text, aud="caller")
    grant = compile_grant(claims)
    # A real audit log that writes nothing: _check counts each allowed message in it.
    audit = AuditLog(None, app="brokerbench", run="bench")
    broker = Broker(authority, audit, lambda _: None, cast(Any, None), call_timeout=30.0)
    peer = Peer(cast(Any, None), "caller")
    number = 12345
    peer.handles[number] = Handle(number, text, claims, grant)
    action = Action.ICC_CALL
    if broker._check(peer, number, action, "echo.echo", valid=True) is not peer.handles[number]:
        raise RuntimeError("Broker._check refused a call its token allows")
    # A refusal returns None and is counted (and audited) as the peer's denial.
    denied = peer.denied
    if (
        broker._check(peer, number, action, "echo.other", valid=True) is not None
        or peer.denied != denied + 1
    ):
        raise RuntimeError("Broker._check allowed a call its token does not hold")

    def lookup_and_allows(count: int) -> None:
        handles = peer.handles
        clock = time.time
        for _ in range(count):
            handle = handles.get(number)
            if handle is not None:
                handle.grant.allows(action, "echo.echo", clock())

    def check(count: int) -> None:
        run_check = broker._check
        for _ in range(count):
            run_check(peer, number, action, "echo.echo", valid=True)

    def request_path(count: int) -> None:
        """What Broker._request does before forwarding: target name, validity, check."""
        run_check = broker._check
        feature, service = "echo", "echo"
        for _ in range(count):
            target = f"{feature}.{service}"
            run_check(peer, number, action, target, valid=valid_call(feature, service))

    def loop_only(count: int) -> None:
        clock = time.time
        for _ in range(count):
            clock()

    def admit() -> object:
        found, reason = verifier.diagnose(text, aud="caller")
        if found is None:
            raise RuntimeError(f"the token was refused: {reason}")
        return compile_grant(found)

    def batch(name: str, run_batch: Callable[[int], None], **fields: Any) -> Job:
        def run(count: int) -> list[float]:
            return time_batches(
                run_batch, batch=sizes.check_batch, samples=count, warmup=sizes.check_warmup
            )

        return Job(name, sizes.check_samples, run, calls_per_sample=sizes.check_batch, **fields)

    def admission(count: int) -> list[int]:
        return time_each(admit, samples=count, warmup=sizes.admission_warmup)

    return [
        batch(
            CHECK_ROW,
            check,
            target=CHECK_TARGET,
            note=(
                "includes the audit log's per-message allow counter; "
                f"{sizes.check_batch} calls per sample, so p99 is over batch averages"
            ),
        ),
        batch(
            "handle dict lookup + Grant.allows, time.time() per call",
            lookup_and_allows,
            detail=True,
        ),
        batch("name + valid_call + Broker._check (as _request)", request_path, detail=True),
        batch("batch loop + time.time() only", loop_only, detail=True),
        Job(
            ADMISSION_ROW,
            sizes.admissions,
            admission,
            target=ADMISSION_TARGET,
            extra={"token_chars": len(text)},
        ),
    ]


def matching_jobs(sizes: Sizes) -> list[Job]:
    """Publishing to topics never published before, with many subscriptions and with few."""
    fresh = itertools.count()
    raw = msgspec.Raw(msgspec.msgpack.encode("x"))

    def publisher(patterns: int) -> Callable[[int], list[float]]:
        deliver = _subscribed(patterns)._deliver_event

        def publish(count: int) -> None:
            for _ in range(count):
                deliver(f"bench.fresh.t{next(fresh)}", raw, "caller")

        def run(count: int) -> list[float]:
            return time_batches(
                publish, batch=sizes.check_batch, samples=count, warmup=sizes.check_warmup
            )

        return run

    return [
        Job(
            MATCH_ROW,
            sizes.check_samples,
            publisher(sizes.subscriptions),
            calls_per_sample=sizes.check_batch,
            target=MATCH_TARGET,
            note=f"{sizes.subscriptions:,} distinct patterns held; each topic is new (no cache)",
            extra={"subscriptions": sizes.subscriptions},
        ),
        Job(
            "publish to a fresh topic, 10 subscriptions",
            sizes.check_samples,
            publisher(10),
            calls_per_sample=sizes.check_batch,
            detail=True,
        ),
    ]


def _subscribed(patterns: int) -> Broker:
    """A broker one peer of which holds ``patterns`` distinct subscriptions (``bench.sN`` and
    ``bench.sN.*``, half each, and ``bench.fresh.*``, which each topic reaches), added as
    ``Broker._subscribe`` adds them."""
    authority = TokenAuthority(KeyRing.generate())
    audit = AuditLog(None, app="brokerbench", run="bench")
    broker = Broker(authority, audit, lambda _: None, cast(Any, None), call_timeout=30.0)
    peer = Peer(cast(Any, None), "subscriber")
    for i in range(patterns - 1):
        pattern = f"bench.s{i // 2}" + (".*" if i % 2 else "")
        subscriber = Subscriber(pattern)  # no peer, no host: reached, and nothing to write
        peer.subscriptions[pattern] = subscriber
        broker._topics.add(pattern, subscriber)
    broker._topics.add("bench.fresh.*", Subscriber("bench.fresh.*"))
    return broker
