"""``python -m capsule``: the same command line as the ``capsule`` script."""

from __future__ import annotations

from capsule._cli._main import run

run()
