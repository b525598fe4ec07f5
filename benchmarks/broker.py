"""The broker: brokered calls, pipelined calls, events, authorization and fairness.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Measures, in one run and on one machine:

* the floor: a 64-byte ping-pong over a Unix socketpair between this process (trio)
  and a child Python process running a trio echo loop on the other end (``pass_fds``);
* brokered request/reply between two containers: a ``caller`` feature's service makes
  sequential ``await ctx.call("echo", "echo", payload)`` calls (64 B) and times each
  with ``time.perf_counter_ns`` inside its container; target p50 <= 2.5x the floor's p50;
  a host ``sup.call("echo", "echo", ...)`` beside it, for comparison;
* pipelined calls: 64 tasks of the ``caller`` container calling ``echo.echo`` in a loop
  (64 in flight), timed inside the container: calls/s, target >= 20,000;
* one-way events: a ``publisher`` container publishes a burst of ``bench.tick`` events
  to a ``subscriber`` container that counts them; timed by the host from the start of
  the burst to the subscriber's last counted event: events/s, target >= 100,000, with
  the events counted against those sent (the broker drops events to a subscriber whose
  queue passes 4 MiB, and the container drops past its own buffer);
* per-message authorization in this process: the handle lookup + ``Grant.allows`` as
  ``Broker._check`` does them, and ``Broker._check`` itself on a fake peer; target
  <= 1 us p50; admission (``diagnose`` + ``compile_grant`` of the token text, as
  ``Broker._admit``), target <= 100 us p50;
* topic matching: ``Broker._deliver_event`` to a topic published for the first time (no
  cached answer) while one peer holds ``subscriptions`` distinct patterns (100,000; 10,000
  with ``--quick``), and with 10 for comparison; target <= 20 us p50 (matching walks a trie
  of the topic's segments, so it must not grow with the number of subscriptions);
* fairness: the p99 of sequential host calls to a ``quiet`` feature alone, then while a
  ``flooder`` feature publishes as fast as it can, then while it calls with 64 in flight;
  target: flooded p99 <= 2x the quiet p99.

All measures run interleaved, in rounds, so machine noise spreads over all of them.
Must run where containers can start (as root here). Run:
``python benchmarks/broker.py [--json PATH] [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

# first: importing _common takes benchmarks/ off sys.path, where this helpers' package is
import _brokerbench  # noqa: F401 - imported for its modules below, found through it
import trio

# isort: split
from _brokerbench.app import build_app
from _brokerbench.floor import PAYLOAD, EchoChild, PingPong, floor_job
from _brokerbench.inprocess import (
    ADMISSION_ROW,
    ADMISSION_TARGET,
    CHECK_ROW,
    CHECK_TARGET,
    MATCH_ROW,
    MATCH_TARGET,
    authorization_jobs,
    matching_jobs,
)
from _brokerbench.sizes import FULL, QUICK, Sizes
from _brokerbench.variants import ROUTING_FIELD_ROW, ROUTING_TARGET, routing_jobs
from _common import (
    Job,
    LabelledTarget,
    Measure,
    flatten,
    gc_paused,
    machine_info,
    parse_arguments,
    percentile,
    print_report,
    print_table,
    quiet_logs,
    report_payload,
    run_interleaved,
    write_json,
)

from capsule import Supervisor

NAME: Final = "broker"

CALL_RATIO_TARGET: Final = 2.5  # brokered call p50 / floor p50
PIPELINE_TARGET: Final = 20_000.0  # calls/s, 64 in flight
EVENTS_TARGET: Final = 100_000.0  # events/s
FAIRNESS_TARGET: Final = 2.0  # flooded p99 / quiet p99
IN_FLIGHT: Final = 64

CALL_ROW: Final = "brokered call container -> container, 64 B, sequential"
VARIANT_CALL_ROW: Final = "the same call to a feature running two variants"
VARIANT_RATIO_TARGET: Final = 1.1  # brokered call p50 with variants on / without
HOST_CALL_ROW: Final = "host sup.call -> container, 64 B, sequential"
PIPELINE_ROW: Final = f"pipelined calls, {IN_FLIGHT} in flight: time per call"
EVENTS_ROW: Final = "events publisher -> subscriber: time per event counted"
QUIET_ALONE: Final = "quiet host -> quiet.ping, alone"
QUIET_PUBLISH: Final = "quiet ping while flooder publishes flat out"
QUIET_CALL: Final = f"quiet ping while flooder calls, {IN_FLIGHT} in flight"


# -- calls -----------------------------------------------------------------------------------


def call_jobs(sup: Supervisor, sizes: Sizes) -> list[Job]:
    async def in_container(count: int, feature: str = "echo") -> list[int]:
        request = {"n": count, "warmup": sizes.call_warmup, "payload": PAYLOAD, "feature": feature}
        durations = await sup.call("caller", "bench", request)
        if not isinstance(durations, list) or len(durations) != count:
            raise RuntimeError(f"caller.bench returned {type(durations).__name__}")
        return [int(value) for value in durations]

    async def from_host(count: int) -> list[int]:
        clock = time.perf_counter_ns
        durations: list[int] = []
        with gc_paused():
            for _ in range(sizes.call_warmup):
                await sup.call("echo", "echo", PAYLOAD)
            for _ in range(count):
                start = clock()
                reply = await sup.call("echo", "echo", PAYLOAD)
                durations.append(clock() - start)
                if reply != PAYLOAD:
                    raise RuntimeError(f"echo.echo answered {reply!r}")
        return durations

    async def pipelined(count: int) -> list[float]:
        per_call: list[float] = []
        request = {
            "tasks": IN_FLIGHT,
            "per_task": sizes.pipeline_per_task,
            "warmup": sizes.pipeline_warmup_per_task,
            "payload": PAYLOAD,
        }
        for _ in range(count):
            elapsed = await sup.call("caller", "pipeline", request)
            per_call.append(int(elapsed) / (IN_FLIGHT * sizes.pipeline_per_task))
        return per_call

    return [
        Job(
            CALL_ROW,
            sizes.calls,
            lambda count: trio.from_thread.run(in_container, count),
            note="timed inside the caller's container around each await ctx.call(...)",
        ),
        Job(
            VARIANT_CALL_ROW,
            sizes.calls,
            lambda count: trio.from_thread.run(in_container, count, "split"),
            detail=True,
            note="split.echo runs 1.0.0 and 2.0.0 side by side (50/50, keyed by the caller)",
        ),
        Job(
            HOST_CALL_ROW,
            sizes.host_calls,
            lambda count: trio.from_thread.run(from_host, count),
            detail=True,
        ),
        Job(
            PIPELINE_ROW,
            sizes.rounds,
            lambda count: trio.from_thread.run(pipelined, count),
            calls_per_sample=IN_FLIGHT * sizes.pipeline_per_task,
            target=LabelledTarget(
                1e6 / PIPELINE_TARGET, label=f">= {PIPELINE_TARGET:,.0f} calls/s"
            ),
            note=(
                f"one sample per round: {IN_FLIGHT} tasks x"
                f" {sizes.pipeline_per_task} calls, timed inside the caller's container"
            ),
        ),
    ]


# -- events ----------------------------------------------------------------------------------


@dataclass
class EventTally:
    sent: int = 0
    counted: int = 0
    publish_ns: int = 0
    bursts: int = 0
    broker_dropped_before: int = -1
    broker_dropped_after: int = -1


def _broker_dropped(sup: Supervisor, feature: str) -> int:
    """Events the broker dropped to ``feature`` (its queue past 4 MiB); -1 if unknown."""
    instance = sup.feature(feature).instance
    peer = getattr(instance, "peer", None)
    return int(getattr(getattr(peer, "conn", None), "dropped", -1))


def event_job(sup: Supervisor, sizes: Sizes, tally: EventTally) -> Job:
    async def bursts(count: int) -> list[float]:
        per_event: list[float] = []
        clock = time.perf_counter_ns
        for _ in range(count):
            base = int(await sup.call("subscriber", "count"))
            with gc_paused():
                start = clock()
                publish_ns = int(await sup.call("publisher", "burst", {"m": sizes.events}))
                answer = await sup.call(
                    "subscriber",
                    "wait",
                    {"target": base + sizes.events, "stall_s": sizes.event_stall_s},
                )
                done = clock() - int(answer["since_last_ns"])
            counted = int(answer["count"]) - base
            if counted <= 0:
                raise RuntimeError("the subscriber counted no events")
            tally.sent += sizes.events
            tally.counted += counted
            tally.publish_ns += publish_ns
            tally.bursts += 1
            per_event.append((done - start) / counted)
        return per_event

    return Job(
        EVENTS_ROW,
        sizes.rounds,
        lambda count: trio.from_thread.run(bursts, count),
        calls_per_sample=sizes.events,
        target=LabelledTarget(1e6 / EVENTS_TARGET, label=f">= {EVENTS_TARGET:,.0f} events/s"),
        note=(
            f"one burst of {sizes.events:,} per round, timed by the host from the burst's"
            " start to the last event the subscriber counted"
        ),
    )


# -- fairness --------------------------------------------------------------------------------


def _paced(sup: Supervisor) -> int:
    """Turns the broker made a flooding connection wait so far; -1 if unknown."""
    turns = getattr(getattr(sup, "_broker", None), "turns", None)
    return int(getattr(turns, "paced", -1))


def fairness_jobs(
    sup: Supervisor, sizes: Sizes, floods: dict[str, list[int]], paced: dict[str, int]
) -> list[Job]:
    async def pings(count: int) -> list[int]:
        clock = time.perf_counter_ns
        durations: list[int] = []
        for _ in range(sizes.quiet_warmup):
            await sup.call("quiet", "ping", PAYLOAD)
        for _ in range(count):
            start = clock()
            reply = await sup.call("quiet", "ping", PAYLOAD)
            durations.append(clock() - start)
            if reply != PAYLOAD:
                raise RuntimeError(f"quiet.ping answered {reply!r}")
        return durations

    async def alone(count: int) -> list[int]:
        with gc_paused():
            return await pings(count)

    async def flooded(mode: str, count: int) -> list[int]:
        sent: list[int] = []
        request = {"mode": mode, "tasks": IN_FLIGHT, "payload": PAYLOAD}

        async def flood() -> None:
            sent.append(int(await sup.call("flooder", "flood", request, timeout=120)))

        before = _paced(sup)
        with gc_paused():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await trio.sleep(sizes.flood_ramp_s)
                durations = await pings(count)
                if sent:  # the row would time quiet calls with no flood beside them
                    raise RuntimeError(f"the {mode} flood ended before the quiet calls did")
                await sup.call("flooder", "stop")
        floods[mode].extend(sent)
        paced[mode] = paced.get(mode, 0) + _paced(sup) - before
        return durations

    return [
        Job(QUIET_ALONE, sizes.quiet_pings, lambda n: trio.from_thread.run(alone, n)),
        Job(
            QUIET_PUBLISH,
            sizes.quiet_pings,
            lambda n: trio.from_thread.run(flooded, "publish", n),
            detail=True,
        ),
        Job(
            QUIET_CALL,
            sizes.quiet_pings,
            lambda n: trio.from_thread.run(flooded, "call", n),
            detail=True,
        ),
    ]


# -- the timed run ---------------------------------------------------------------------------


@dataclass
class Collected:
    jobs: list[Job]
    samples: list[list[list[float]]]
    tally: EventTally
    floods: dict[str, list[int]]
    paced: dict[str, int]


async def run_timed(root: Path, sizes: Sizes, child: EchoChild) -> Collected:
    """Open the supervisor and run every job interleaved from a worker thread."""
    pong = PingPong(child.sock)
    with trio.fail_after(30):
        await pong.exchange()  # the child is up and echoing
    tally = EventTally()
    floods: dict[str, list[int]] = {"publish": [], "call": []}
    paced: dict[str, int] = {}
    app, split_2 = build_app(root)
    async with app.open() as sup:
        if await sup.call("echo", "echo", PAYLOAD) != PAYLOAD:
            raise RuntimeError("echo.echo does not return its request")
        await sup.set_variants("split", {"1.0.0": 50, str(split_2): 50})
        tally.broker_dropped_before = _broker_dropped(sup, "subscriber")
        jobs = [
            floor_job(pong, sizes.floor_round_trips, sizes.floor_warmup),
            *call_jobs(sup, sizes),
            event_job(sup, sizes, tally),
            *authorization_jobs(sizes),
            *matching_jobs(sizes),
            *routing_jobs(sizes),
            *fairness_jobs(sup, sizes, floods, paced),
        ]
        samples = await trio.to_thread.run_sync(lambda: run_interleaved(jobs, rounds=sizes.rounds))
        tally.broker_dropped_after = _broker_dropped(sup, "subscriber")
        if sup.variants("split") is None:
            raise RuntimeError("split's variants were aborted during the run")
    return Collected(jobs, samples, tally, floods, paced)


# -- the summary -----------------------------------------------------------------------------


def _row(measures: Sequence[Measure], name: str) -> Measure:
    found = next((m for m in measures if m.name == name), None)
    if found is None:
        raise RuntimeError(f"no row {name!r}")
    return found


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def summary(floor: Measure, measures: Sequence[Measure], tally: EventTally) -> list[dict[str, Any]]:
    """The headline figures against their targets: value, floor, ratio, target, met."""
    floor_rate = 1e6 / floor.p50_us
    call = _row(measures, CALL_ROW)
    pipeline = _row(measures, PIPELINE_ROW)
    events = _row(measures, EVENTS_ROW)
    check = _row(measures, CHECK_ROW)
    admission = _row(measures, ADMISSION_ROW)
    match = _row(measures, MATCH_ROW)
    alone = _row(measures, QUIET_ALONE)
    split = _row(measures, VARIANT_CALL_ROW)
    routing = _row(measures, ROUTING_FIELD_ROW)
    rows: list[dict[str, Any]] = []

    def add(*cells: Any, **more: Any) -> None:
        name, value, ref, ratio, target, met = cells
        rows.append(
            {
                "measure": name,
                "value": value,
                "floor": ref,
                "ratio": round(ratio, 4),
                "target": target,
                "met": bool(met),
                **more,
            }
        )

    call_ratio = call.p50_us / floor.p50_us
    add(
        "brokered call p50 / floor p50",
        f"{call.p50_us:.1f} us",
        f"{floor.p50_us:.1f} us",
        call_ratio,
        f"<= {CALL_RATIO_TARGET:g}x",
        call_ratio <= CALL_RATIO_TARGET,
    )
    split_ratio = split.p50_us / call.p50_us
    add(
        "brokered call p50, variants on / off",
        f"{split.p50_us:.1f} us",
        f"{call.p50_us:.1f} us (off)",
        split_ratio,
        f"<= {VARIANT_RATIO_TARGET:g}x",
        split_ratio <= VARIANT_RATIO_TARGET,
    )
    add(
        "variant routing decision p50 (payload field key)",
        f"{routing.p50_us * 1000:.0f} ns",
        f"{floor.p50_us:.1f} us",
        routing.p50_us / floor.p50_us,
        "<= 5 us",
        routing.p50_us <= ROUTING_TARGET.p50_us,
    )
    pipeline_rate = 1e6 / pipeline.p50_us
    add(
        f"pipelined calls, {IN_FLIGHT} in flight",
        _rate(pipeline_rate),
        _rate(floor_rate),
        pipeline_rate / floor_rate,
        f">= {PIPELINE_TARGET:,.0f}/s",
        pipeline_rate >= PIPELINE_TARGET,
        calls_per_s=round(pipeline_rate),
    )
    event_rate = 1e6 / events.p50_us
    add(
        "one-way events through the broker",
        _rate(event_rate),
        _rate(floor_rate),
        event_rate / floor_rate,
        f">= {EVENTS_TARGET:,.0f}/s",
        event_rate >= EVENTS_TARGET,
        events_per_s=round(event_rate),
        sent=tally.sent,
        counted=tally.counted,
    )
    add(
        "per-message check p50 (Broker._check)",
        f"{check.p50_us * 1000:.0f} ns",
        f"{floor.p50_us:.1f} us",
        check.p50_us / floor.p50_us,
        "<= 1 us",
        check.p50_us <= CHECK_TARGET.p50_us,
    )
    add(
        "admission p50 (diagnose + compile_grant)",
        f"{admission.p50_us:.1f} us",
        f"{floor.p50_us:.1f} us",
        admission.p50_us / floor.p50_us,
        "<= 100 us",
        admission.p50_us <= ADMISSION_TARGET.p50_us,
    )
    add(
        "publish to a fresh topic p50, many subscriptions",
        f"{match.p50_us:.2f} us",
        f"{floor.p50_us:.1f} us",
        match.p50_us / floor.p50_us,
        "<= 20 us",
        match.p50_us <= MATCH_TARGET.p50_us,
        subscriptions=match.extra.get("subscriptions"),
    )
    for name, label in ((QUIET_PUBLISH, "publish flood"), (QUIET_CALL, "call flood")):
        flooded = _row(measures, name)
        ratio = flooded.p99_us / alone.p99_us
        add(
            f"fairness, {label}: quiet p99 / alone p99",
            f"{flooded.p99_us:.0f} us",
            f"{alone.p99_us:.0f} us (alone)",
            ratio,
            f"<= {FAIRNESS_TARGET:g}x",
            ratio <= FAIRNESS_TARGET,
        )
    return rows


def print_summary(rows: Sequence[dict[str, Any]]) -> None:
    header = ("measure", "value", "floor", "ratio", "target", "met")
    cells = [
        (
            r["measure"],
            r["value"],
            r["floor"],
            f"{r['ratio']:.3g}x",
            r["target"],
            "yes" if r["met"] else "NOT met",
        )
        for r in rows
    ]
    print()
    print_table("headline figures against the targets (PERFORMANCE.md)", header, cells)


# -- the run ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(
        NAME, "Brokered calls, events, authorization and fairness against a socket floor.", argv
    )
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    started = time.perf_counter()

    child = EchoChild()
    try:
        with tempfile.TemporaryDirectory(prefix="capsule-bench-broker-") as scratch:
            collected = trio.run(run_timed, Path(scratch) / "app", sizes, child)
    finally:
        child.close()
    elapsed = time.perf_counter() - started

    jobs, tally = collected.jobs, collected.tally
    (floor_spec, floor_samples), *measured = zip(jobs, collected.samples, strict=True)
    floor_rounds_us = [percentile(chunk, 50) / 1000 for chunk in floor_samples]
    floor_extra = {**floor_spec.extra, "round_p50_us": [round(v, 3) for v in floor_rounds_us]}
    floor = replace(floor_spec, extra=floor_extra).summarize(flatten(floor_samples))
    call_target = LabelledTarget(
        CALL_RATIO_TARGET * floor.p50_us, label=f"p50 <= {CALL_RATIO_TARGET:g}x floor"
    )
    measures: list[Measure] = []
    for job, samples in measured:
        spec = replace(job, target=call_target) if job.name == CALL_ROW else job
        measures.append(spec.summarize(flatten(samples)))

    print_report(
        f"capsule broker benchmark ({'quick' if args.quick else 'full'} run,"
        f" {sizes.rounds} interleaved rounds, {elapsed:.1f} s)",
        floor,
        measures,
    )
    print(
        f"  floor p50 per round: {min(floor_rounds_us):.1f} to {max(floor_rounds_us):.1f} us"
        " (the spread shows how steady the machine was)"
    )
    dropped = (
        tally.broker_dropped_after - tally.broker_dropped_before
        if tally.broker_dropped_before >= 0
        else None
    )
    publish_rate = tally.sent / (tally.publish_ns / 1e9) if tally.publish_ns else 0.0
    print(
        f"  events: {tally.counted:,} counted of {tally.sent:,} sent in {tally.bursts} bursts;"
        f" dropped by the broker (subscriber queue > 4 MiB): "
        f"{'unknown' if dropped is None else f'{dropped:,}'};"
        f" publisher's own loop: {publish_rate:,.0f} publishes/s"
    )
    for mode, counts in collected.floods.items():
        print(
            f"  flood by {mode}: {sum(counts):,} sent over {len(counts)} floods;"
            f" flooding connections paced {collected.paced.get(mode, 0):,} turns"
        )
    rows = summary(floor, measures, tally)
    print_summary(rows)

    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "anyio", "msgspec", "cloudpickle"]),
        floor=floor,
        measures=measures,
        settings={"quick": args.quick, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    payload["summary"] = rows
    payload["events"] = {
        "sent": tally.sent,
        "counted": tally.counted,
        "bursts": tally.bursts,
        "broker_dropped": dropped,
        "publisher_loop_per_s": round(publish_rate),
    }
    payload["floods"] = dict(collected.floods)
    payload["paced"] = dict(collected.paced)
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
