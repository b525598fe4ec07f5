"""fusefs: each feature container's file-system view, served over FUSE.

Does not import capsule: capsule hands fusefs a view specification and a policy.
"""

from __future__ import annotations

from fusefs._spec import MountKind as MountKind
from fusefs._spec import MountSpec as MountSpec
from fusefs._spec import ViewSpec as ViewSpec
from fusefs._spec import ViewSpecError as ViewSpecError

__all__ = ["MountKind", "MountSpec", "ViewSpec", "ViewSpecError"]
