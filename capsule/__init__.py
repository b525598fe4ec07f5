"""capsule: isolate the features of one application from each other.

Users import ``capsule``, ``capsule.feature``, ``capsule.tokens``, ``capsule.errors``
and ``capsule.testing``; every other module is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
