"""capsule beside its peers: a ``multiprocessing`` worker and, when installed, a Ray actor.

Must not gate: the figures are reported; only a real error exits non-zero.

Measures, interleaved in one run and on one machine, for each system:

* the same 64-byte request/reply call, sequential, p50/p99: from the host to a worker
  (capsule: ``sup.call`` to a container; multiprocessing: the parent over a ``Pipe``; Ray:
  the driver to an actor) and from one worker to another (capsule: container to container
  through the broker; multiprocessing: over a direct ``Pipe``; Ray: actor to actor);
* pipelined calls, 64 in flight, both ways: calls/s;
* cold start, request to first call served;
* idle memory per worker (PSS, from ``/proc/<pid>/smaps_rollup`` for each), and what
  every worker shares, once: capsule's zygote, the forkserver, Ray's daemons;

each as a ratio capsule / peer, beside the broker benchmark's socket floor (a 64-byte
ping-pong between two Python processes). Ray is an optional extra (``capsule-rt[peers]``):
without it, and always with ``--quick``, its rows are skipped with a note. Ray runs as a
local cluster that this script starts and shuts down (no dashboard, two CPUs, its own
temporary directory, removed after). Must run where containers can start (as root here).
Run: ``python benchmarks/peers.py [--json PATH] [--quick]``. The logic is in ``_peers/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

# The multiprocessing workers come from a forkserver, which runs this file again as
# ``__mp_main__`` with this process's sys.path, from which _common took benchmarks/ off:
# put it back, so that the forkserver can import _peers.mpworker. Nothing else is imported
# at the top of this file, so that the forkserver and its workers stay small.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def main(argv: Sequence[str] | None = None) -> int:
    from _peers.run import main as run  # noqa: PLC0415 - see above: not at the top

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
