"""Capability-token costs against the floor of a trio socketpair round trip.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Measures, in one run and on one machine:

* the floor: a 64-byte ping-pong over ``trio.socket.socketpair()`` between two tasks
  of one process;
* token admission: ``verifier.verify(token, aud=...)`` + ``compile_grant(claims)`` on
  a six-capability token, with verify and compile also timed apart;
* the cached per-message check ``grant.allows(...)`` for an exact-name hit, a
  pattern hit and a miss, with ``time.time()`` read per check (as the broker does)
  and with a fixed ``now`` (the bare check), timed in batches;
* minting (signing) and attenuating, plus raw Ed25519 sign and verify as anchors.

All measures run interleaved, in rounds, so machine noise spreads over all of them.
Run: ``python benchmarks/tokens.py [--json PATH] [--quick]``. The targets checked are
the project's: admission <= 100 us p50, per-message check <= 1 us p50.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Final

import trio
from _common import (
    Job,
    Target,
    flatten,
    gc_paused,
    machine_info,
    parse_arguments,
    percentile,
    print_report,
    report_payload,
    run_interleaved,
    time_batches,
    time_each,
    write_json,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capsule.tokens import (
    Action,
    Grant,
    KeyRing,
    Token,
    TokenAuthority,
    TokenClaims,
    TokenVerifier,
    compile_grant,
)

NAME: Final = "tokens"
MESSAGE_SIZE: Final = 64
FEATURE: Final = "spellcheck"
DELEGATE: Final = "thesaurus"

#: What a spell-checking feature's manifest would grant: six capabilities of all kinds.
EXACT_CAPS: Final = (
    "icc:call:dictionary.lookup",
    "icc:call:thesaurus.*",
    "icc:publish:spell.checked",
    "icc:subscribe:editor.changed",
    "fs:read:/data/words/",
    "fs:read,write:/state/?bytes=1048576",
)
#: The same grant with the dictionary reached through a pattern instead of a name.
PATTERN_CAPS: Final = ("icc:call:dictionary.*", *EXACT_CAPS[1:])
#: What the feature delegates onward when it attenuates its token.
DELEGATED_CAPS: Final = ("icc:call:dictionary.lookup", "fs:read:/data/words/")

ADMISSION_TARGET: Final = Target(100.0)
CHECK_TARGET: Final = Target(1.0)


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    floor_round_trips: int
    floor_warmup: int  # per round
    slow_samples: int  # operations timed one call at a time (tens of microseconds)
    slow_warmup: int  # per round
    check_batch: int  # calls per timing sample for the per-message check
    check_samples: int
    check_warmup: int  # batches, per round


FULL: Final = Sizes(
    rounds=10,
    floor_round_trips=20_000,
    floor_warmup=200,
    slow_samples=5_000,
    slow_warmup=50,
    check_batch=1_000,
    check_samples=1_000,
    check_warmup=5,
)
QUICK: Final = Sizes(
    rounds=4,
    floor_round_trips=3_000,
    floor_warmup=100,
    slow_samples=400,
    slow_warmup=20,
    check_batch=1_000,
    check_samples=100,
    check_warmup=2,
)


# -- the floor -------------------------------------------------------------------------


async def _ping_pong(round_trips: int, warmup: int) -> list[int]:
    """Round-trip times (ns) of a 64-byte message echoed back by a second task."""
    client, server = trio.socket.socketpair()
    payload = b"\x5a" * MESSAGE_SIZE
    clock = time.perf_counter_ns
    durations: list[int] = []

    async def echo() -> None:
        while True:
            data = await server.recv(65536)
            if not data:
                return
            sent = 0
            while sent < len(data):
                sent += await server.send(data[sent:])

    async def exchange() -> None:
        sent = 0
        while sent < MESSAGE_SIZE:
            sent += await client.send(payload[sent:])
        received = 0
        while received < MESSAGE_SIZE:
            chunk = await client.recv(MESSAGE_SIZE - received)
            if not chunk:
                raise RuntimeError("the echo task closed the socketpair early")
            received += len(chunk)

    with client, server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(warmup):
                await exchange()
            for _ in range(round_trips):
                start = clock()
                await exchange()
                durations.append(clock() - start)
            client.shutdown(socket.SHUT_WR)  # the echo task sees EOF and returns
    return durations


def floor_job(sizes: Sizes) -> Job:
    def run(count: int) -> list[int]:
        with gc_paused():
            return trio.run(_ping_pong, count, sizes.floor_warmup)

    return Job(
        f"trio socketpair round trip, {MESSAGE_SIZE} B, two tasks",
        sizes.floor_round_trips,
        run,
        extra={"message_bytes": MESSAGE_SIZE},
    )


# -- helpers building jobs -------------------------------------------------------------------


def _each_job(
    name: str,
    call: Callable[[], object],
    sizes: Sizes,
    *,
    target: Target | None = None,
    extra: dict[str, object] | None = None,
    detail: bool = False,
) -> Job:
    """A job timing ``call()`` one call per sample."""

    def run(count: int) -> list[int]:
        return time_each(call, samples=count, warmup=sizes.slow_warmup)

    return Job(name, sizes.slow_samples, run, target=target, extra=dict(extra or {}), detail=detail)


def _batch_job(
    name: str,
    run_batch: Callable[[int], None],
    sizes: Sizes,
    *,
    target: Target | None = None,
    note: str = "",
) -> Job:
    """A job timing ``run_batch(check_batch)``: per-call figures for sub-microsecond work."""

    def run(count: int) -> list[float]:
        return time_batches(
            run_batch, batch=sizes.check_batch, samples=count, warmup=sizes.check_warmup
        )

    return Job(
        name,
        sizes.check_samples,
        run,
        calls_per_sample=sizes.check_batch,
        target=target,
        note=note,
    )


# -- token admission -------------------------------------------------------------------------


def admission_jobs(verifier: TokenVerifier, token: Token, sizes: Sizes) -> list[Job]:
    raw = token.raw
    text = token.text
    claims = verifier.verify(raw, aud=FEATURE)
    if not compile_grant(claims).allows(Action.ICC_CALL, "dictionary.lookup", time.time()):
        raise RuntimeError("the compiled grant refuses a capability its token holds")

    def admit_raw() -> Grant:
        return compile_grant(verifier.verify(raw, aud=FEATURE))

    def admit_text() -> Grant:
        return compile_grant(verifier.verify(text, aud=FEATURE))

    def verify_only() -> TokenClaims:
        return verifier.verify(raw, aud=FEATURE)

    def compile_only() -> Grant:
        return compile_grant(claims)

    shape: dict[str, object] = {
        "capabilities": len(claims.caps),
        "token_bytes": len(raw),
        "text_chars": len(text),
    }
    return [
        _each_job(
            "admission: verify + compile_grant (raw bytes)",
            admit_raw,
            sizes,
            target=ADMISSION_TARGET,
            extra=shape,
        ),
        _each_job(
            "admission: verify + compile_grant (ctk1 text)",
            admit_text,
            sizes,
            target=ADMISSION_TARGET,
            extra=shape,
        ),
        _each_job("verify only (raw bytes)", verify_only, sizes, detail=True),
        _each_job("compile_grant only", compile_only, sizes, detail=True),
    ]


# -- the per-message check ------------------------------------------------------------


def _check_with_clock(grant: Grant, action: Action, target: str) -> Callable[[int], None]:
    """A batch calling ``grant.allows`` with ``time.time()`` read for every call."""

    def run(count: int) -> None:
        clock = time.time
        for _ in range(count):
            grant.allows(action, target, clock())

    return run


def _check_fixed_now(
    grant: Grant, action: Action, target: str, now: float
) -> Callable[[int], None]:
    """A batch calling ``grant.allows`` with one fixed ``now``: the bare check."""

    def run(count: int) -> None:
        for _ in range(count):
            grant.allows(action, target, now)

    return run


def _loop_only(count: int) -> None:
    """The batch loop and the clock read alone: overhead included in each check row."""
    clock = time.time
    for _ in range(count):
        clock()


def check_jobs(exact: Grant, pattern: Grant, sizes: Sizes) -> list[Job]:
    action = Action.ICC_CALL
    cases: Sequence[tuple[str, Grant, str, bool]] = (
        ("exact-name hit", exact, "dictionary.lookup", True),
        ("pattern hit", pattern, "dictionary.lookup", True),
        ("miss", pattern, "clipboard.read", False),
    )
    now = time.time()
    for label, grant, target, expected in cases:
        if grant.allows(action, target, now) is not expected:
            raise RuntimeError(f"check {label}: grant.allows({target!r}) is not {expected}")

    jobs = [
        _batch_job(
            f"check {label}, time.time() per call",
            _check_with_clock(grant, action, target),
            sizes,
            target=CHECK_TARGET,
        )
        for label, grant, target, _ in cases
    ]
    jobs += [
        _batch_job(
            f"check {label}, fixed now",
            _check_fixed_now(grant, action, target, now),
            sizes,
            target=CHECK_TARGET,
        )
        for label, grant, target, _ in cases
    ]
    jobs.append(
        _batch_job(
            "batch loop + time.time() only",
            _loop_only,
            sizes,
            note=(
                "included in the check rows, not subtracted; "
                f"{sizes.check_batch} calls per sample, so p99 is over batch averages"
            ),
        )
    )
    return jobs


# -- minting, attenuation, raw Ed25519 -------------------------------------------------------


def minting_jobs(authority: TokenAuthority, parent: Token, sizes: Sizes) -> list[Job]:
    def mint() -> Token:
        return authority.mint(FEATURE, EXACT_CAPS, ttl=3600)

    def attenuate() -> Token:
        return authority.attenuate(parent, DELEGATED_CAPS, holder=FEATURE, aud=DELEGATE)

    child = attenuate()
    if authority.verify(child, aud=DELEGATE).chain[-1] != parent.claims.jti:
        raise RuntimeError("the attenuated token does not name its parent")
    return [
        _each_job(f"mint (sign), {len(EXACT_CAPS)} caps from text", mint, sizes),
        _each_job(
            f"attenuate {len(EXACT_CAPS)} -> {len(DELEGATED_CAPS)} caps (verify parent + sign)",
            attenuate,
            sizes,
        ),
    ]


def ed25519_jobs(token: Token, sizes: Sizes) -> list[Job]:
    """Raw ``cryptography`` Ed25519 on a message the size of the token: the anchors."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = token.raw
    signature = key.sign(message)
    public.verify(signature, message)

    def sign() -> bytes:
        return key.sign(message)

    def verify() -> None:
        public.verify(signature, message)

    return [
        _each_job("Ed25519 sign alone (cryptography)", sign, sizes, detail=True),
        _each_job("Ed25519 verify alone (cryptography)", verify, sizes, detail=True),
    ]


# -- the run ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, "Capability-token costs against a trio round-trip floor.", argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()

    authority = TokenAuthority(KeyRing.generate())
    verifier = authority.verifier
    exact_token = authority.mint(FEATURE, EXACT_CAPS, ttl=3600)
    pattern_token = authority.mint(FEATURE, PATTERN_CAPS, ttl=3600)
    exact_grant = compile_grant(verifier.verify(exact_token.raw, aud=FEATURE))
    pattern_grant = compile_grant(verifier.verify(pattern_token.raw, aud=FEATURE))

    jobs = [
        floor_job(sizes),
        *admission_jobs(verifier, exact_token, sizes),
        *check_jobs(exact_grant, pattern_grant, sizes),
        *minting_jobs(authority, exact_token, sizes),
        *ed25519_jobs(exact_token, sizes),
    ]
    collected = run_interleaved(jobs, rounds=sizes.rounds)
    elapsed = time.perf_counter() - started

    (floor_spec, floor_samples), *measured = zip(jobs, collected, strict=True)
    floor_rounds_us = [percentile(chunk, 50) / 1000 for chunk in floor_samples]
    floor_extra = {**floor_spec.extra, "round_p50_us": [round(v, 3) for v in floor_rounds_us]}
    floor = replace(floor_spec, extra=floor_extra).summarize(flatten(floor_samples))
    measures = [job.summarize(flatten(samples)) for job, samples in measured]

    print_report(
        f"capsule token benchmark ({'quick' if args.quick else 'full'} run,"
        f" {sizes.rounds} interleaved rounds, {elapsed:.1f} s)",
        floor,
        measures,
    )
    print(
        f"  floor p50 per round: {min(floor_rounds_us):.2f} to {max(floor_rounds_us):.2f} us"
        " (the spread shows how steady the machine was)"
    )
    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "cryptography", "msgspec"]),
        floor=floor,
        measures=measures,
        settings={"quick": args.quick, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
