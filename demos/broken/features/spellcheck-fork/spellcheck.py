"""The spellcheck-fork bundle of the broken demo: checked by `capsule check`, never run.

Its manifest carries the planted mistakes; this module holds only what the checker
reads (the entry attribute). The working code is in demos/notes/features/spellcheck/.
"""

from __future__ import annotations

from capsule.feature import Feature

feature = Feature()
