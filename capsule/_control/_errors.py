"""The errors of the control socket, as the command line sees them.

::

    ControlError (CapsuleError)          the running app could not be reached or answered a failure
    ├── NoRunningAppError (LookupError)  no running app matches (or several do)
    └── ControlRefusedError (PermissionError)   the app refused the admin secret
"""

from __future__ import annotations

from capsule.errors import CapsuleError

__all__ = ["ControlError", "ControlRefusedError", "NoRunningAppError"]


class ControlError(CapsuleError):
    """A request to a running app failed; ``kind`` names the app's error when it sent one."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        self.kind = kind
        super().__init__(message)


class NoRunningAppError(ControlError, LookupError):
    """No running app matches the selection, or several do."""


class ControlRefusedError(ControlError, PermissionError):
    """The app refused the request: the admin secret did not match, or the peer is not allowed."""
