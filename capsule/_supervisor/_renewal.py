"""Token lifetime and renewal: how long a container's tokens live, and keeping them valid
for as long as it runs.

Renews only what the container holds, with the same audience and capabilities (a new
id and expiry), and never a token that is revoked or expired: a failure is logged,
audited and shown in the feature's statistics, never papered over by minting afresh.
"""

from __future__ import annotations

import time
from typing import Final, final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._manifest import App
from capsule._manifest._app import TOKEN_TTL_RANGE
from capsule._supervisor._handle import FeatureHandle
from capsule._supervisor._instance import Instance
from capsule._supervisor._plan import token_files
from capsule._tokens._authority import Token, TokenAuthority
from capsule.errors import CapsuleError, ConfigError

__all__ = ["RENEW_AT", "TOKEN_TTL", "Renewer", "token_lifetime"]

_log = structlog.get_logger("capsule.supervisor")

TOKEN_TTL: Final = 3600.0
"""The lifetime of a container's tokens unless the app or ``open_supervisor`` says otherwise."""
RENEW_AT: Final = 2 / 3
"""The fraction of a token's lifetime after which it is renewed."""
_RETRY_SHARE: Final = 12
"""A failed renewal is tried again after 1/12 of the lifetime (so about four times before
the token expires), at least ``_RETRY_MIN`` and at most ``_RETRY_MAX`` seconds later."""
_RETRY_MIN: Final = 0.1
_RETRY_MAX: Final = 60.0


def token_lifetime(app: App, given: float | None) -> float:
    """The lifetime of ``app``'s tokens: ``given`` (``open_supervisor(token_ttl=)``, checked),
    else the app's ``token_ttl``, else TOKEN_TTL."""
    if given is None:
        return app.manifest.token_ttl or TOKEN_TTL
    low, high = TOKEN_TTL_RANGE
    if isinstance(given, bool) or not isinstance(given, int | float) or not low <= given <= high:
        raise ConfigError(
            f"token_ttl must be from {low:g} to {high:g} seconds, found {given!r}",
            key="token_ttl",
        )
    return float(given)


@final
class Renewer:
    """Renews the tokens of every running container of one app run."""

    def __init__(
        self,
        authority: TokenAuthority,
        broker: Broker,
        audit: AuditLog,
        *,
        ttl: float,
        view_timeout: float,
    ) -> None:
        self._authority = authority
        self._broker = broker
        self._audit = audit
        self.ttl = ttl
        self._view_timeout = view_timeout
        self._in_view: dict[int, dict[str, Token]] = {}  # id(instance) -> its view's keys

    def view_keys(self, revoked: frozenset[str] | set[str]) -> set[str]:
        """The ids the views may still know tokens in ``revoked`` by (a renewal the view has
        not confirmed yet): a revocation must name those too."""
        return {
            key
            for keys in self._in_view.values()
            for key, token in keys.items()
            if token.token_id in revoked
        }

    async def keep(self, handle: FeatureHandle, instance: Instance, tokens: list[Token]) -> None:
        """Renew ``instance``'s tokens at ``RENEW_AT`` of their lifetime until it ends (or
        until none is left to renew: each revoked or lapsed one drops out)."""
        current = list(tokens)
        in_view = {t.token_id: t for t in tokens}  # the id a view's mount is keyed by -> now
        self._in_view[id(instance)] = in_view
        try:
            await self._keep(handle, instance, current, in_view)
        finally:
            del self._in_view[id(instance)]

    async def _keep(
        self,
        handle: FeatureHandle,
        instance: Instance,
        current: list[Token],
        in_view: dict[str, Token],
    ) -> None:
        retry_at = 0.0
        while current:
            due = min(_due(t) for t in current)
            delay = max(due, retry_at) - time.time()  # token times are wall-clock
            if delay > 0:
                with anyio.move_on_after(delay):
                    await instance.ended.wait()
            if instance.ended.is_set():
                return
            error = self._renew_due(handle, instance, current, in_view)
            if error is None:
                error = await self._rekey_view(instance, current, in_view)
            if error is None:
                handle.renewal_error = None
                retry_at = 0.0
                continue
            if instance.ended.is_set():
                return
            self._failed(handle, error)
            retry_at = time.time() + min(_RETRY_MAX, max(_RETRY_MIN, self.ttl / _RETRY_SHARE))

    def _renew_due(
        self,
        handle: FeatureHandle,
        instance: Instance,
        current: list[Token],
        in_view: dict[str, Token],
    ) -> str | None:
        """Renew every token that is due, each at once in the broker (no await between the
        check and the swap); the first failure, or None."""
        now = time.time()
        error = None
        for old in list(current):
            if _due(old) > now:
                continue
            claims, reason = self._authority.verifier.diagnose(old, now=now)
            if claims is None:
                revoked = self._authority.revocations.any_revoked(old.claims.jti, old.claims.chain)
                current.remove(old)  # nothing renews it any more
                if revoked:
                    _log.info("revoked token not renewed", feature=handle.name, token=old.token_id)
                else:
                    error = f"token {old.token_id} lapsed without renewal: {reason}"
                continue
            try:
                new = self._authority.renew(old, ttl=self.ttl, now=now)
            except CapsuleError as exc:
                error = error or f"renewing token {old.token_id} failed: {exc}"
                continue
            current[current.index(old)] = new
            self._broker.renew(instance.peer, old.token_id, new)
            self._authority.retire(old)
            for key, token in in_view.items():
                if token is old:
                    in_view[key] = new
            handle.renewals += 1
        return error

    async def _rekey_view(
        self, instance: Instance, current: list[Token], in_view: dict[str, Token]
    ) -> str | None:
        """Move the view's mounts and /capsule/ files to the renewed tokens; why not, or None."""
        view = instance.view
        moved = {key: token.token_id for key, token in in_view.items() if key != token.token_id}
        if view is None or not moved:
            return None
        expires = {token.token_id: token.claims.exp for token in in_view.values()}
        answer = await view.rekey(moved, expires, token_files(current), self._view_timeout)
        if answer is None:
            if instance.ended.is_set():
                return None
            return (
                f"its file-system server did not confirm the renewal within {self._view_timeout:g}s"
            )
        lapsed = {path: why for path, why in answer.closed.items() if why == "expired"}
        for key in list(in_view):  # rekeyed or closed: either way the server is done with it
            token = in_view.pop(key)
            in_view[token.token_id] = token
        if lapsed:
            paths = ", ".join(sorted(lapsed))
            return f"the view's mounts {paths} expired before their renewal reached them"
        return None

    def _failed(self, handle: FeatureHandle, error: str) -> None:
        handle.renewal_error = error
        handle.renewals_failed += 1
        _log.error("token renewal failed", feature=handle.name, error=error)
        self._audit.record("renew", feature=handle.name, decision="fail", reason=error)


def _due(token: Token) -> float:
    """When ``token`` is due for renewal (Unix time)."""
    claims = token.claims
    return claims.iat + RENEW_AT * (claims.exp - claims.iat)
