"""The exceptions capsule raises, and nothing else.

Must not import anything from capsule: every other module imports this one.

The tree::

    CapsuleError
    ├── ConfigError (ValueError)          .path .key .line .problems: bad manifest, key or option
    ├── UpdateRefusedError (PermissionError)  .feature .reasons: a bundle asks for unapproved access
    ├── TokenError
    │   ├── InvalidTokenError             every verification failure, deliberately opaque
    │   └── CapabilityDeniedError (PermissionError)  .capability .feature
    │       └── ShadowError               .version: a shadow variant acts on nothing outside itself
    ├── FeatureError                      .feature always set
    │   ├── FeatureStartError
    │   ├── FeatureCrashedError           .exit_code .signal
    │   ├── FeatureTimeoutError (TimeoutError)
    │   ├── FeatureUnavailableError
    │   ├── UpdateError                   an update, rollback or change of variants did not happen
    │   └── RemoteError                   from a container: .remote_type .remote_traceback
    ├── ApprovalRequiredError (PermissionError)  .feature .diff: a widening not approved yet
    ├── IPCError
    │   ├── ChannelClosedError
    │   ├── ProtocolError
    │   └── OverloadedError               the broker refused a message over the sender's quota
    ├── SandboxError                      a mechanism missing or failing: which, and the fix
    └── InternalError                     a bug in capsule

Each error also subclasses the builtin a caller would naturally catch, so
``except PermissionError`` or ``except TimeoutError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ApprovalRequiredError",
    "CapabilityDeniedError",
    "CapsuleError",
    "ChannelClosedError",
    "ConfigError",
    "FeatureCrashedError",
    "FeatureError",
    "FeatureStartError",
    "FeatureTimeoutError",
    "FeatureUnavailableError",
    "IPCError",
    "InternalError",
    "InvalidTokenError",
    "OverloadedError",
    "ProtocolError",
    "RemoteError",
    "SandboxError",
    "ShadowError",
    "TokenError",
    "UpdateError",
    "UpdateRefusedError",
]


class CapsuleError(Exception):
    """Base class of every error capsule raises on purpose."""


class ConfigError(CapsuleError, ValueError):
    """A manifest, key file, capability string or option is invalid.

    ``path`` is the file (or ``None`` for a string given directly), ``key`` the
    dotted key path inside it, and ``line`` the 1-based line when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        key: str | None = None,
        line: int | None = None,
        problems: tuple[object, ...] = (),
    ) -> None:
        self.message = message
        self.path = path
        self.key = key
        self.line = line
        #: every problem found when one load found several (capsule.Problem objects)
        self.problems = problems
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
        if self.key:
            where = f"{where} [{self.key}]" if where else f"[{self.key}]"
        return f"{where}: {self.message}" if where else self.message


class UpdateRefusedError(CapsuleError, PermissionError):
    """A new version or a plugin asks for access the app's policy does not approve.

    ``feature`` names it; ``reasons`` holds one line per request refused, each naming
    the capsule.toml file, line and key where the request is written. Nothing was started.
    """

    def __init__(self, feature: str, reasons: tuple[str, ...]) -> None:
        self.feature = feature
        self.reasons = reasons
        listing = "".join(f"\n  {reason}" for reason in reasons)
        super().__init__(
            f"feature {feature!r}: refused, the app's policy does not approve "
            f"{'this request' if len(reasons) == 1 else 'these requests'}:{listing}"
        )


class TokenError(CapsuleError):
    """Base class of token and authority errors."""


class InvalidTokenError(TokenError):
    """A token was refused.

    Deliberately opaque: forged, tampered, truncated, expired, not yet valid,
    revoked, wrong audience and old-epoch tokens all raise this same error with
    the same message. The real reason is logged by the verifier.
    """

    def __init__(self) -> None:
        super().__init__("invalid token")


class CapabilityDeniedError(TokenError, PermissionError):
    """An action was refused because no held capability covers it."""

    def __init__(self, capability: str, feature: str | None = None, reason: str = "") -> None:
        self.capability = capability
        self.feature = feature
        self.reason = reason
        who = f"feature {feature!r}" if feature else "the caller"
        text = f"{who} lacks capability {capability}"
        if reason:
            text += f" ({reason})"
        super().__init__(text)


class ShadowError(CapabilityDeniedError):
    """A shadow variant (``version`` of ``feature``) tried to act outside itself: a call, a
    stream, a delegation or a network connection. A shadow's answers are discarded, so what
    it would do is refused, whatever its token grants."""

    def __init__(self, capability: str, feature: str, version: str) -> None:
        self.version = version
        super().__init__(
            capability,
            feature,
            f"version {version} is a shadow variant: it acts on nothing outside itself",
        )


class FeatureError(CapsuleError):
    """Base class of errors about one feature; ``feature`` names it."""

    def __init__(self, feature: str, message: str) -> None:
        self.feature = feature
        super().__init__(f"feature {feature!r}: {message}")


class FeatureStartError(FeatureError):
    """A feature's container could not be started or did not become ready."""


class FeatureCrashedError(FeatureError):
    """A feature's container exited while work was in flight."""

    def __init__(
        self,
        feature: str,
        message: str = "crashed",
        *,
        exit_code: int | None = None,
        signal: int | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.signal = signal
        super().__init__(feature, message)


class FeatureTimeoutError(FeatureError, TimeoutError):
    """A call to a feature, or its start, exceeded its deadline."""


class FeatureUnavailableError(FeatureError):
    """The feature is stopped or quarantined; calls to it fail at once."""


class UpdateError(FeatureError):
    """A live update (or a rollback) of a feature did not happen: the new version did not
    start, its state did not move, it widens what the feature may do without approval, or
    another update of it is under way; or a change of variants (set, promote, abort) that
    could not be made. The message says why and which version serves now."""


class RemoteError(FeatureError):
    """An exception raised inside a container, carried back as data only."""

    def __init__(self, feature: str, remote_type: str, message: str, remote_traceback: str) -> None:
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        super().__init__(feature, f"{remote_type}: {message}")


class ApprovalRequiredError(CapsuleError, PermissionError):
    """A plugin or a new version would be granted more than the app grants now, within what
    its policy allows: it needs approving (``approve=True``, ``--approve``) first.

    ``feature`` names it and ``diff`` is the capability diff (``+ ...``/``- ...`` lines) the
    message shows. Nothing was started.
    """

    def __init__(self, feature: str, diff: str) -> None:
        self.feature = feature
        self.diff = diff
        super().__init__(
            f"feature {feature!r}: needs approval, it would be granted more than the app "
            f"grants now:\n{diff}\napprove it to go on (approve=True, or --approve)"
        )


class IPCError(CapsuleError):
    """Base class of channel and wire errors."""


class ChannelClosedError(IPCError):
    """The peer closed the channel."""


class ProtocolError(IPCError):
    """The peer sent a frame that is malformed, oversized or unexpected."""


class OverloadedError(IPCError):
    """The broker refused a message because its sender is over a quota (calls in flight,
    message rate); the message was not delivered. Slow down and retry."""


class SandboxError(CapsuleError):
    """An isolation mechanism is missing or failed; the message says which and how to fix it."""


class InternalError(CapsuleError):
    """A bug in capsule. Please report it with the traceback (``--debug``)."""
