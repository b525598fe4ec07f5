"""Errors across the channel: an exception as an Error message, and an Error message back
as the exception a caller would catch.

Data only both ways: an Error carries names and text, never an object to rebuild.
"""

from __future__ import annotations

from capsule._ipc._messages import Error
from capsule.errors import (
    CapabilityDeniedError,
    CapsuleError,
    FeatureCrashedError,
    FeatureError,
    FeatureTimeoutError,
    FeatureUnavailableError,
    InvalidTokenError,
    OverloadedError,
    RemoteError,
)

__all__ = ["error_for", "exception_for"]


def exception_for(error: Error, *, caller: str) -> CapsuleError:
    """The exception an Error stands for, as raised to ``caller`` (the feature that asked)."""
    kind = error.kind
    if kind == "denied":
        return CapabilityDeniedError(error.capability or "(unknown)", caller, error.message)
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
    if kind == "overloaded":
        return OverloadedError(f"feature {caller!r}: {error.message}")
    return FeatureError(error.feature or caller, error.message)


def error_for(request_id: int, exc: CapsuleError) -> Error:
    """The Error message for an exception the broker raised while handling a request."""
    if isinstance(exc, CapabilityDeniedError):
        return Error(
            id=request_id,
            kind="denied",
            feature=exc.feature or "",
            message=exc.reason,
            capability=exc.capability,
        )
    if isinstance(exc, InvalidTokenError):
        return Error(id=request_id, kind="token", feature="", message=str(exc))
    if isinstance(exc, RemoteError):
        return Error(
            id=request_id,
            kind="remote",
            feature=exc.feature,
            message=exc.remote_message,
            type=exc.remote_type,
            traceback=exc.remote_traceback,
        )
    if isinstance(exc, OverloadedError):
        return Error(id=request_id, kind="overloaded", feature="", message=str(exc))
    kinds: list[tuple[type[FeatureError], str]] = [
        (FeatureUnavailableError, "unavailable"),
        (FeatureTimeoutError, "timeout"),
    ]
    feature = exc.feature if isinstance(exc, FeatureError) else ""
    message = str(exc)
    if isinstance(exc, FeatureError):
        prefix = f"feature {exc.feature!r}: "
        message = message.removeprefix(prefix)
    if isinstance(exc, FeatureCrashedError):
        return Error(
            id=request_id,
            kind="crashed",
            feature=feature,
            message=message,
            exit_code=exc.exit_code,
            signal=exc.signal,
        )
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return Error(id=request_id, kind=kind, feature=feature, message=message)
    return Error(id=request_id, kind="invalid", feature=feature, message=message)
