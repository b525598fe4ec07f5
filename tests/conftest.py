"""Settings every test shares: a SIGINT that stops the command-line tools the tests start.

A runner that starts the suite in the background (``cmd &`` in a non-interactive shell)
hands it SIGINT ignored, and an ignored signal stays ignored across ``exec``: every
``capsule run``, ``top`` or ``audit --follow`` a test then stops with Ctrl-C would ignore
it. Restoring Python's own handler here makes the children start with the default
disposition again, so those tests test the tools and not the way the suite was started.
"""

from __future__ import annotations

import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
