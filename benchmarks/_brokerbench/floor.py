"""The floor the broker's calls are measured against: a 64-byte ping-pong over a Unix
socketpair between this process (trio) and a child Python process echoing on the other end.

Harness only: it measures no capsule code.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from typing import Final

import trio
from _common import Job, gc_paused

MESSAGE_SIZE: Final = 64
PAYLOAD: Final = b"\x5a" * MESSAGE_SIZE

#: The floor's other end: a trio echo loop on the socket inherited as fd argv[1].
ECHO_CHILD: Final = """
import socket, sys, trio

async def main(fd):
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
    with sock:
        while True:
            data = await sock.recv(65536)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[await sock.send(view):]

trio.run(main, int(sys.argv[1]))
"""


class EchoChild:
    """A child Python process echoing on one end of a socketpair; this process holds the other."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        with theirs:
            fd = theirs.fileno()
            # A fixed argument list: this interpreter and the echo program above.
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-c", ECHO_CHILD, str(fd)], pass_fds=[fd]
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)  # the child reads EOF and returns
        self.sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class PingPong:
    """The parent side of the floor, in trio: send 64 B, receive the 64 B echoed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = trio.socket.from_stdlib_socket(sock)

    async def exchange(self) -> None:
        sent = 0
        while sent < MESSAGE_SIZE:
            sent += await self.sock.send(PAYLOAD[sent:])
        received = 0
        while received < MESSAGE_SIZE:
            chunk = await self.sock.recv(MESSAGE_SIZE - received)
            if not chunk:
                raise RuntimeError("the echo child closed the socket")
            received += len(chunk)

    async def round_trips(self, count: int, warmup: int) -> list[int]:
        clock = time.perf_counter_ns
        durations: list[int] = []
        with gc_paused():
            for _ in range(warmup):
                await self.exchange()
            for _ in range(count):
                start = clock()
                await self.exchange()
                durations.append(clock() - start)
        return durations


def floor_job(pong: PingPong, round_trips: int, warmup: int) -> Job:
    """The floor as a job: ``round_trips`` exchanges over the rounds, ``warmup`` each round."""

    def run(count: int) -> list[int]:
        return trio.from_thread.run(pong.round_trips, count, warmup)

    return Job(
        f"Unix socket ping-pong, {MESSAGE_SIZE} B, two processes, trio both sides",
        round_trips,
        run,
        extra={"message_bytes": MESSAGE_SIZE},
    )
