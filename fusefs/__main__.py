"""``python -m fusefs FD``: serve the view that arrives on control socket FD (a SEQPACKET
socket), as :class:`fusefs.ServerProcess` starts it. Not meant to be run by hand.
"""

from __future__ import annotations

import socket
import sys

from fusefs._control import MAX_DATAGRAM, Serve, decode_to_server
from fusefs._server import serve


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: python -m fusefs CONTROL_FD\n")
        return 2
    control = socket.socket(fileno=int(argv[1]))
    first = decode_to_server(control.recv(MAX_DATAGRAM))
    if not isinstance(first, Serve):
        sys.stderr.write(f"fusefs: expected a serve message first, got {type(first).__name__}\n")
        return 2
    serve(first.view, first.mountpoint, control)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
