"""Command-line start-up against the floor of a fresh interpreter that does nothing.

Must not gate: targets are reported, met or not; only a real error exits non-zero.

Measures, in one run and on one machine, the wall time of a whole process, from spawn to
exit (each a fresh interpreter, as a user's shell runs it):

* the floor: ``python -c pass``;
* ``capsule --help``;
* ``capsule ps --app NAME`` with no app of that name running (it looks for the app's
  control socket and says there is none: exit status 1);
* ``capsule ps --app PID`` of one app running (the ``demos/greeter`` app, started
  beforehand with ``capsule run`` and stopped afterwards, both untimed);
* ``python -c "import capsule"``.

``capsule`` is the installed script beside this interpreter (``python -m capsule`` when
there is none). Every process may write and read compiled bytecode (an installed package
has its ``.pyc`` files), in a cache directory of its own (``PYTHONPYCACHEPREFIX``, removed
at the end) that the untimed first process of each row fills. All measures run
interleaved, in rounds, so machine noise spreads over all of them. Must run as root or
where ``capsule doctor`` reports full isolation (the running app is sandboxed). Run:
``python benchmarks/cli.py [--json PATH] [--quick]``.
The target checked is the project's: ``capsule --help`` and ``capsule ps`` <= 150 ms.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from _common import (
    Job,
    Target,
    flatten,
    machine_info,
    parse_arguments,
    print_report,
    report_payload,
    run_interleaved,
    write_json,
)

NAME: Final = "cli"
ROOT: Final = Path(__file__).resolve().parents[1]
APP: Final = ROOT / "demos" / "greeter"
START_TARGET: Final = Target(150_000.0)
#: how long the app may take to come up, and to stop
APP_WAIT: Final = 60.0


@dataclass(frozen=True)
class Sizes:
    """Sample counts for one run (full or ``--quick``); each is split over the rounds."""

    rounds: int
    samples: int  # processes timed per measure
    warmup: int  # untimed processes per measure, per round (page cache, pyc files)


FULL: Final = Sizes(rounds=10, samples=100, warmup=1)
QUICK: Final = Sizes(rounds=2, samples=4, warmup=1)


def capsule_command() -> list[str]:
    """How a user starts ``capsule`` with this interpreter's installation."""
    script = Path(sys.executable).parent / "capsule"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "capsule"]


def bytecode_environment(cache: Path) -> dict[str, str]:
    """This environment, with compiled bytecode written and read beneath ``cache`` (the
    source tree stays as it is; PYTHONDONTWRITEBYTECODE would compile every capsule
    module on every start, which no installed copy does)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def _run(
    command: Sequence[str], expect: int, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(  # noqa: S603 - our own fixed commands
        command, cwd=ROOT, env=env, capture_output=True, check=False, timeout=60
    )
    if result.returncode != expect:
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode}, expected {expect}:\n"
            f"{result.stderr.decode(errors='replace')}"
        )
    return result


def process_job(
    name: str, command: Sequence[str], sizes: Sizes, env: dict[str, str], *, expect: int = 0
) -> Job:
    """A measure: the wall time of ``command`` from spawn to exit (its status checked)."""

    def run(samples: int) -> list[int]:
        clock = time.perf_counter_ns
        durations: list[int] = []
        for _ in range(sizes.warmup):
            _run(command, expect, env)
        for _ in range(samples):
            start = clock()
            _run(command, expect, env)
            durations.append(clock() - start)
        return durations

    return Job(
        name, sizes.samples, run, target=START_TARGET if name.startswith("capsule ") else None
    )


class RunningApp:
    """``capsule run`` of the greeter demo, with its state and audit log in ``scratch``."""

    def __init__(self, scratch: Path) -> None:
        self.log = scratch / "run.err"
        command = [
            *capsule_command(),
            *("run", str(APP), "--no-status"),
            *("--state-dir", str(scratch / "state"), "--audit", str(scratch / "audit.jsonl")),
        ]
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(  # noqa: S603 - our own fixed command
                command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
            )

    def ps(self) -> list[str]:
        return [*capsule_command(), "ps", "--app", str(self.process.pid)]

    def wait_up(self) -> None:
        """Until ``capsule ps`` reaches it and every feature runs."""
        deadline = time.monotonic() + APP_WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"capsule run exited:\n{self.log.read_text(errors='replace')}")
            result = subprocess.run(  # noqa: S603 - our own fixed command
                self.ps(), cwd=ROOT, capture_output=True, check=False
            )
            if result.returncode == 0 and b"running" in result.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the app did not come up in {APP_WAIT:g} s")

    def stop(self) -> None:
        """SIGTERM, then wait: the run removes its mounts, cgroups and run directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(APP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError("capsule run did not stop on SIGTERM") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, "Start-up of the capsule command line.", argv)
    sizes = QUICK if args.quick else FULL
    capsule = capsule_command()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capsule-bench-cli-") as scratch:
        app = RunningApp(Path(scratch))
        try:
            app.wait_up()
            env = bytecode_environment(Path(scratch) / "pycache")
            floor_job = process_job("python -c pass", [sys.executable, "-c", "pass"], sizes, env)
            jobs = [
                process_job("capsule --help", [*capsule, "--help"], sizes, env),
                process_job(
                    "capsule ps, no app running",
                    [*capsule, "ps", "--app", f"bench-{secrets.token_hex(4)}"],
                    sizes,
                    env,
                    expect=1,
                ),
                process_job("capsule ps, one app running", app.ps(), sizes, env),
                process_job("import capsule", [sys.executable, "-c", "import capsule"], sizes, env),
            ]
            collected = run_interleaved([floor_job, *jobs], rounds=sizes.rounds)
        finally:
            app.stop()
    elapsed = time.perf_counter() - started

    floor = floor_job.summarize(flatten(collected[0]))
    measures = [job.summarize(flatten(c)) for job, c in zip(jobs, collected[1:], strict=True)]
    print_report(
        f"capsule command-line benchmark ({'quick' if args.quick else 'full'} run, "
        f"{sizes.rounds} interleaved rounds, {elapsed:.1f} s)",
        floor,
        measures,
    )
    payload = report_payload(
        NAME,
        machine=machine_info(["capsule-rt", "trio", "msgspec", "structlog"]),
        floor=floor,
        measures=measures,
        settings={"quick": args.quick, "capsule": capsule, **asdict(sizes)},
        elapsed_s=elapsed,
    )
    written = write_json(args.json, payload)
    print(f"results written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
