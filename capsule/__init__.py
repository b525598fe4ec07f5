"""capsule: isolate the features of one application from each other.

Users import ``capsule``, ``capsule.feature``, ``capsule.tokens``, ``capsule.errors``
and ``capsule.testing``; every other module is private.

The errors are imported with the package; every other name on first use (a module
``__getattr__``), so that ``import capsule`` and the command line load only what they
touch: the manifest names import the manifest package, the supervisor's names the
supervisor (and with it trio, the spawn client and the file-system server).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from capsule._facade import load_names, publish
from capsule.errors import ApprovalRequiredError as ApprovalRequiredError
from capsule.errors import CapabilityDeniedError as CapabilityDeniedError
from capsule.errors import CapsuleError as CapsuleError
from capsule.errors import ChannelClosedError as ChannelClosedError
from capsule.errors import ConfigError as ConfigError
from capsule.errors import FeatureCrashedError as FeatureCrashedError
from capsule.errors import FeatureError as FeatureError
from capsule.errors import FeatureStartError as FeatureStartError
from capsule.errors import FeatureTimeoutError as FeatureTimeoutError
from capsule.errors import FeatureUnavailableError as FeatureUnavailableError
from capsule.errors import InternalError as InternalError
from capsule.errors import InvalidTokenError as InvalidTokenError
from capsule.errors import IPCError as IPCError
from capsule.errors import OverloadedError as OverloadedError
from capsule.errors import ProtocolError as ProtocolError
from capsule.errors import RemoteError as RemoteError
from capsule.errors import SandboxError as SandboxError
from capsule.errors import ShadowError as ShadowError
from capsule.errors import TokenError as TokenError
from capsule.errors import UpdateError as UpdateError
from capsule.errors import UpdateRefusedError as UpdateRefusedError

if TYPE_CHECKING:
    from capsule._manifest import Access as Access
    from capsule._manifest import App as App
    from capsule._manifest import AppManifest as AppManifest
    from capsule._manifest import Candidate as Candidate
    from capsule._manifest import CapabilityDiff as CapabilityDiff
    from capsule._manifest import CheckReport as CheckReport
    from capsule._manifest import EnvVar as EnvVar
    from capsule._manifest import FeatureGrant as FeatureGrant
    from capsule._manifest import FeatureManifest as FeatureManifest
    from capsule._manifest import FsApproval as FsApproval
    from capsule._manifest import FsRequest as FsRequest
    from capsule._manifest import LimitChange as LimitChange
    from capsule._manifest import Limits as Limits
    from capsule._manifest import MountGrant as MountGrant
    from capsule._manifest import Policy as Policy
    from capsule._manifest import Problem as Problem
    from capsule._manifest import RestartPolicy as RestartPolicy
    from capsule._manifest import Route as Route
    from capsule._manifest import Severity as Severity
    from capsule._manifest import UpdatePolicy as UpdatePolicy
    from capsule._manifest import check_app as check_app
    from capsule._manifest import load_app as load_app
    from capsule._manifest import load_feature as load_feature
    from capsule._supervisor._history import VersionRecord as VersionRecord
    from capsule._supervisor._open import open_supervisor as open_supervisor
    from capsule._supervisor._supervisor import FeatureHandle as FeatureHandle
    from capsule._supervisor._supervisor import FeatureState as FeatureState
    from capsule._supervisor._supervisor import FeatureStatistics as FeatureStatistics
    from capsule._supervisor._supervisor import PluginInfo as PluginInfo
    from capsule._supervisor._supervisor import Supervisor as Supervisor
    from capsule._supervisor._supervisor import SupervisorStatistics as SupervisorStatistics
    from capsule._supervisor._supervisor import UpdateReport as UpdateReport
    from capsule._supervisor._supervisor import VariantsStatus as VariantsStatus
    from capsule._supervisor._variant_stats import Interval as Interval
    from capsule._supervisor._variant_stats import VariantStatistics as VariantStatistics
    from capsule._supervisor._views import ViewTimeouts as ViewTimeouts

__version__ = "0.1.0"

__all__ = [
    "Access",
    "App",
    "AppManifest",
    "ApprovalRequiredError",
    "Candidate",
    "CapabilityDeniedError",
    "CapabilityDiff",
    "CapsuleError",
    "ChannelClosedError",
    "CheckReport",
    "ConfigError",
    "EnvVar",
    "FeatureCrashedError",
    "FeatureError",
    "FeatureGrant",
    "FeatureHandle",
    "FeatureManifest",
    "FeatureStartError",
    "FeatureState",
    "FeatureStatistics",
    "FeatureTimeoutError",
    "FeatureUnavailableError",
    "FsApproval",
    "FsRequest",
    "IPCError",
    "InternalError",
    "Interval",
    "InvalidTokenError",
    "LimitChange",
    "Limits",
    "MountGrant",
    "OverloadedError",
    "PluginInfo",
    "Policy",
    "Problem",
    "ProtocolError",
    "RemoteError",
    "RestartPolicy",
    "Route",
    "SandboxError",
    "Severity",
    "ShadowError",
    "Supervisor",
    "SupervisorStatistics",
    "TokenError",
    "UpdateError",
    "UpdatePolicy",
    "UpdateRefusedError",
    "UpdateReport",
    "VariantStatistics",
    "VariantsStatus",
    "VersionRecord",
    "ViewTimeouts",
    "__version__",
    "check_app",
    "load_app",
    "load_feature",
    "open_supervisor",
]

#: the names imported on first use, by group and defining module. The first use of a name
#: imports its whole group and publishes every name of it, so that a class first reached
#: through another name (``open_supervisor()`` yields a ``Supervisor``) shows ``capsule``
#: as its module too.
_GROUPS: Final[tuple[Mapping[str, tuple[str, ...]], ...]] = (
    {
        "capsule._manifest": (
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
            "check_app",
            "load_app",
            "load_feature",
        ),
    },
    {
        "capsule._supervisor._history": ("VersionRecord",),
        "capsule._supervisor._open": ("open_supervisor",),
        "capsule._supervisor._supervisor": (
            "FeatureHandle",
            "FeatureState",
            "FeatureStatistics",
            "PluginInfo",
            "Supervisor",
            "SupervisorStatistics",
            "UpdateReport",
            "VariantsStatus",
        ),
        "capsule._supervisor._variant_stats": (
            "Interval",
            "VariantStatistics",
        ),
        "capsule._supervisor._views": ("ViewTimeouts",),
    },
)
_GROUP_OF: Final = {name: group for group in _GROUPS for names in group.values() for name in names}


if not TYPE_CHECKING:  # mypy sees the imports above, and flags a name that is not one

    def __getattr__(name: str) -> object:
        group = _GROUP_OF.get(name)
        if group is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        load_names(__name__, globals(), group)
        return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


publish(__name__, globals(), (n for n in __all__ if n in globals() and n != "__version__"))
