"""Errors across the channel: an exception as an Error message, and an Error message back
as the exception a caller would catch.

Data only both ways: an Error carries names and text, never an object to rebuild.
"""

from __future__ import annotations

import errno as errnos
import socket

from capsule._ipc._messages import Error
from capsule.errors import (
    CapabilityDeniedError,
    CapsuleError,
    FeatureCrashedError,
    FeatureError,
    FeatureStartError,
    FeatureTimeoutError,
    FeatureUnavailableError,
    InvalidTokenError,
    OverloadedError,
    RemoteError,
    ShadowError,
)

__all__ = ["error_for", "exception_for", "network_error", "os_error_for"]


def exception_for(error: Error, *, caller: str) -> CapsuleError | OSError:
    """The exception an Error stands for, as raised to ``caller`` (the feature that asked)."""
    kind = error.kind
    if kind == "network":
        return os_error_for(error)
    if kind == "denied":
        return CapabilityDeniedError(error.capability or "(unknown)", caller, error.message)
    if kind == "shadow":
        return ShadowError(error.capability or "(unknown)", error.feature, error.version)
    if kind == "token":
        return InvalidTokenError()
    if kind == "remote":
        return RemoteError(error.feature, error.type, error.message, error.traceback)
    if kind == "crashed":
        return FeatureCrashedError(
            error.feature, error.message, exit_code=error.exit_code, signal=error.signal
        )
    if kind == "unavailable":
        return FeatureUnavailableError(error.feature, error.message)
    if kind == "timeout":
        return FeatureTimeoutError(error.feature, error.message)
    if kind == "start":
        return FeatureStartError(error.feature, error.message)
    if kind == "overloaded":
        return OverloadedError(f"feature {caller!r}: {error.message}")
    return FeatureError(error.feature or caller, error.message)


def os_error_for(error: Error) -> OSError:
    """The OSError a failed connect or listen stands for, as the socket API raises it:
    ConnectionRefusedError, TimeoutError and the like for an errno, socket.gaierror for a
    name that did not resolve (a negative EAI_* code)."""
    code = error.errno
    if code is not None and code < 0:
        return socket.gaierror(code, error.message)
    if code:
        return OSError(code, error.message)  # OSError picks the subclass for the errno
    return OSError(errnos.EIO, error.message)


def network_error(request_id: int, feature: str, exc: OSError, what: str) -> Error:
    """The Error message for ``exc``, raised opening ``what`` (``host:port``) for ``feature``."""
    if isinstance(exc, socket.gaierror):
        code = exc.errno if isinstance(exc.errno, int) and exc.errno < 0 else socket.EAI_FAIL
        text = exc.strerror or str(exc)
    else:
        code = exc.errno or errnos.EIO
        text = exc.strerror or str(exc) or errnos.errorcode.get(code, "failed")
    return Error(
        id=request_id, kind="network", feature=feature, message=f"{what}: {text}", errno=code
    )


_FEATURE_KINDS: tuple[tuple[type[FeatureError], str], ...] = (
    (FeatureCrashedError, "crashed"),
    (FeatureUnavailableError, "unavailable"),
    (FeatureTimeoutError, "timeout"),
    (FeatureStartError, "start"),
)


def error_for(request_id: int, exc: FeatureError | InvalidTokenError) -> Error:
    """The Error message for a feature's state (crashed, unavailable, ...) or a refused token."""
    if isinstance(exc, InvalidTokenError):
        return Error(id=request_id, kind="token", feature="", message=str(exc))
    kind = next((k for cls, k in _FEATURE_KINDS if isinstance(exc, cls)), "invalid")
    crashed = exc if isinstance(exc, FeatureCrashedError) else None
    return Error(
        id=request_id,
        kind=kind,
        feature=exc.feature,
        message=str(exc).removeprefix(f"feature {exc.feature!r}: "),
        exit_code=None if crashed is None else crashed.exit_code,
        signal=None if crashed is None else crashed.signal,
    )
