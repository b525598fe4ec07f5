"""Manifests: capsule.toml and app.toml parsing, validation, grants and routes.

Re-exports the public names only; the implementation lives in the private modules.
"""

from __future__ import annotations

from capsule._manifest._check import check_app as check_app
from capsule._manifest._check import load_app as load_app
from capsule._manifest._diff import Candidate as Candidate
from capsule._manifest._diff import CapabilityDiff as CapabilityDiff
from capsule._manifest._diff import LimitChange as LimitChange
from capsule._manifest._diff import approval_needed as approval_needed
from capsule._manifest._diff import diff_grants as diff_grants
from capsule._manifest._diff import read_candidate as read_candidate
from capsule._manifest._feature import load_feature as load_feature
from capsule._manifest._model import Access as Access
from capsule._manifest._model import AppManifest as AppManifest
from capsule._manifest._model import EnvVar as EnvVar
from capsule._manifest._model import FeatureGrant as FeatureGrant
from capsule._manifest._model import FeatureManifest as FeatureManifest
from capsule._manifest._model import FsApproval as FsApproval
from capsule._manifest._model import FsRequest as FsRequest
from capsule._manifest._model import Limits as Limits
from capsule._manifest._model import MountGrant as MountGrant
from capsule._manifest._model import Policy as Policy
from capsule._manifest._model import RestartPolicy as RestartPolicy
from capsule._manifest._model import Route as Route
from capsule._manifest._model import UpdatePolicy as UpdatePolicy
from capsule._manifest._problems import Problem as Problem
from capsule._manifest._problems import Severity as Severity
from capsule._manifest._report import App as App
from capsule._manifest._report import CheckReport as CheckReport

__all__ = [
    "Access",
    "App",
    "AppManifest",
    "Candidate",
    "CapabilityDiff",
    "CheckReport",
    "EnvVar",
    "FeatureGrant",
    "FeatureManifest",
    "FsApproval",
    "FsRequest",
    "LimitChange",
    "Limits",
    "MountGrant",
    "Policy",
    "Problem",
    "RestartPolicy",
    "Route",
    "Severity",
    "UpdatePolicy",
    "approval_needed",
    "check_app",
    "diff_grants",
    "load_app",
    "load_feature",
    "read_candidate",
]
