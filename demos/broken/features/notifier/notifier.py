"""A notifier whose bundle has code but no capsule.toml."""

from __future__ import annotations

from capsule.feature import Feature

feature = Feature()
