"""Helpers for the public facades: present re-exported names under their public module,
and import the names a facade loads on first use.

Imports no other capsule module itself; ``load_names`` imports the modules it is given.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Mapping, MutableMapping

__all__ = ["load_names", "publish"]


def publish(module: str, namespace: MutableMapping[str, object], names: Iterable[str]) -> None:
    """Rewrite ``__module__`` of re-exported classes and functions so that reprs and
    tracebacks show ``capsule.tokens.TokenAuthority`` rather than a private module."""
    for name in names:
        obj = namespace[name]
        origin = getattr(obj, "__module__", "")
        if origin.startswith("capsule.") and "._" in origin:
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = module


def load_names(
    module: str, namespace: MutableMapping[str, object], names: Mapping[str, tuple[str, ...]]
) -> None:
    """Import each defining module of ``names`` (module -> the names it defines), bind those
    names in the facade ``module``'s ``namespace`` and publish them: what a facade's module
    ``__getattr__`` does when a name it imports on first use is reached."""
    found: dict[str, object] = {}
    for defining, listed in names.items():
        imported = importlib.import_module(defining)
        found.update((name, getattr(imported, name)) for name in listed)
    publish(module, found, list(found))
    namespace.update(found)
