"""Helpers for the public facades: present re-exported names under their public module.

Must not import any other capsule module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, MutableMapping

__all__ = ["publish"]


def publish(module: str, namespace: MutableMapping[str, object], names: Iterable[str]) -> None:
    """Rewrite ``__module__`` of re-exported classes and functions so that reprs and
    tracebacks show ``capsule.tokens.TokenAuthority`` rather than a private module."""
    for name in names:
        obj = namespace[name]
        origin = getattr(obj, "__module__", "")
        if origin.startswith("capsule.") and "._" in origin:
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = module
