"""The routing decision of a feature running variants, in this process: the key of a call,
its keyed hash into 10,000 buckets and the table look-up, as ``CallRouter.forward`` makes
it for every call to such a feature.

Measures only: no containers, no supervisor.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, cast

import msgspec
from _common import Job, Target, time_batches

from capsule._broker._bucketing import first_split, new_salt, parse_sticky
from capsule._broker._routes import Peer
from capsule._broker._variants import VariantRoutes

ROUTING_TARGET: Final = Target(5.0)
ROUTING_CALLER_ROW: Final = "variant routing: key = caller (VariantRoutes.choose)"
ROUTING_FIELD_ROW: Final = "variant routing: key = payload.user_id, 64 B text beside it"


class Sizes(Protocol):
    """The sample counts these jobs take (``_brokerbench.sizes.Sizes`` has them)."""

    check_batch: int
    check_samples: int
    check_warmup: int


def routing_jobs(sizes: Sizes) -> list[Job]:
    """``VariantRoutes.choose`` for a 90/10 split, keyed by the caller and by a payload
    field; callers and users vary so the hash is never of the same key twice in a row."""
    payloads = [
        msgspec.msgpack.encode({"text": "x" * 64, "user_id": f"user-{i}"}) for i in range(1024)
    ]
    callers = [f"feature-{i}" for i in range(1024)]

    def routes(sticky: str) -> VariantRoutes:
        found = VariantRoutes(
            first_split({"1.2.0": 90, "1.3.0": 10}, new_salt()),
            parse_sticky(sticky, "the benchmark"),
            control=0,
            shadow=False,
        )
        found.peers[1] = Peer(cast(Any, None), "spellcheck")
        return found

    def by_caller(count: int) -> None:
        choose = routes("caller").choose
        payload = payloads[0]
        for i in range(count):
            choose(callers[i & 1023], payload, None)

    def by_field(count: int) -> None:
        choose = routes("payload.user_id").choose
        for i in range(count):
            choose("editor", payloads[i & 1023], None)

    def job(name: str, run_batch: Any, **fields: Any) -> Job:
        def run(count: int) -> list[float]:
            return time_batches(
                run_batch, batch=sizes.check_batch, samples=count, warmup=sizes.check_warmup
            )

        return Job(name, sizes.check_samples, run, calls_per_sample=sizes.check_batch, **fields)

    return [
        job(ROUTING_CALLER_ROW, by_caller, detail=True),
        job(
            ROUTING_FIELD_ROW,
            by_field,
            target=ROUTING_TARGET,
            note="decodes that one field of the msgpack payload, then hashes it (BLAKE2b, keyed)",
        ),
    ]
