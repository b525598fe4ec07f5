"""fusefs: each feature container's file-system view, served over FUSE.

Does not import capsule: capsule hands fusefs a view specification (with the grants
behind each mount) and drives its server over a control socket; fusefs checks every
operation against that view and reports what it denied.
"""

from __future__ import annotations

from fusefs._control import Allowed as Allowed
from fusefs._control import Denied as Denied
from fusefs._control import FromServer as FromServer
from fusefs._control import Mounted as Mounted
from fusefs._control import Probe as Probe
from fusefs._control import ProbeReply as ProbeReply
from fusefs._control import Rekey as Rekey
from fusefs._control import Rekeyed as Rekeyed
from fusefs._control import Revoke as Revoke
from fusefs._control import Revoked as Revoked
from fusefs._control import Shutdown as Shutdown
from fusefs._control import decode_from_server as decode_from_server
from fusefs._control import encode as encode
from fusefs._lifecycle import abort_connection as abort_connection
from fusefs._lifecycle import connection_of as connection_of
from fusefs._lifecycle import fuse_mounts_beneath as fuse_mounts_beneath
from fusefs._lifecycle import unmount as unmount
from fusefs._process import ServerError as ServerError
from fusefs._process import ServerProcess as ServerProcess
from fusefs._server import Confine as Confine
from fusefs._server import serve as serve
from fusefs._spec import LISTING_BYTES as LISTING_BYTES
from fusefs._spec import MountKind as MountKind
from fusefs._spec import MountSpec as MountSpec
from fusefs._spec import ViewSpec as ViewSpec
from fusefs._spec import ViewSpecError as ViewSpecError

__all__ = [
    "LISTING_BYTES",
    "Allowed",
    "Confine",
    "Denied",
    "FromServer",
    "MountKind",
    "MountSpec",
    "Mounted",
    "Probe",
    "ProbeReply",
    "Rekey",
    "Rekeyed",
    "Revoke",
    "Revoked",
    "ServerError",
    "ServerProcess",
    "Shutdown",
    "ViewSpec",
    "ViewSpecError",
    "abort_connection",
    "connection_of",
    "decode_from_server",
    "encode",
    "fuse_mounts_beneath",
    "serve",
    "unmount",
]
