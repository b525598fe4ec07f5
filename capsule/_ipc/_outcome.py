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


_FEATURE_KINDS: tuple[tuple[type[FeatureError], str], ...] = (
    (FeatureCrashedError, "crashed"),
    (FeatureUnavailableError, "unavailable"),
    (FeatureTimeoutError, "timeout"),
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
