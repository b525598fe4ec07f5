"""A thesaurus that never got a valid manifest."""

from __future__ import annotations

from capsule.feature import Feature

feature = Feature()
