"""Token lifetime and renewal: how long a container's tokens live, and keeping them valid
for as long as it runs.

Renews only what the container holds, with the same audience and capabilities (a new
id and expiry), and never a token that is revoked or expired: a failure is logged,
audited and shown in the feature's statistics, never papered over by minting afresh.

A container frozen for a live update's keep window (its file-system server frozen with
it) is not renewed: just before it freezes its tokens are renewed once to outlast the
window, and as it thaws they are renewed to the usual lifetime at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
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
        self._loops: dict[int, _Loop] = {}  # id(instance) -> its renewal loop's state

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
        self._loops[id(instance)] = _Loop()
        try:
            await self._keep(handle, instance, current, in_view)
        finally:
            del self._in_view[id(instance)]
            del self._loops[id(instance)]

    async def before_freeze(self, instance: Instance, seconds: float, timeout: float) -> None:  # noqa: ASYNC109 - bounds the renewal it waits for
        """``instance`` is about to be frozen for ``seconds``: renew its tokens once so they
        outlast that (its file-system server rekeyed while it still runs), then renew none
        until :meth:`thawed`. Returns once done, or after ``timeout`` seconds."""
        loop = self._loops.get(id(instance))
        if loop is None:
            return
        loop.stretch = seconds
        loop.stretched = anyio.Event()
        loop.wake.set()
        with anyio.move_on_after(timeout):
            await loop.stretched.wait()

    def thawed(self, instance: Instance) -> None:
        """``instance`` runs again: its tokens are renewed to the usual lifetime now."""
        loop = self._loops.get(id(instance))
        if loop is not None:
            loop.frozen = False
            loop.stretch = None
            loop.renew_all = True
            loop.wake.set()

    async def _keep(
        self,
        handle: FeatureHandle,
        instance: Instance,
        current: list[Token],
        in_view: dict[str, Token],
    ) -> None:
        loop = self._loops[id(instance)]
        retry_at = 0.0
        while current:
            due = min(_due(t) for t in current)
            delay = max(due, retry_at) - time.time()  # token times are wall-clock
            if loop.frozen:
                delay = math.inf  # until thawed: nothing in it can use a token meanwhile
            if delay > 0 and loop.stretch is None:
                with anyio.move_on_after(delay):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_wait_then_cancel, instance.ended, tg.cancel_scope)
                        tg.start_soon(_wait_then_cancel, loop.wake, tg.cancel_scope)
                loop.wake = anyio.Event()
            if instance.ended.is_set():
                return
            if loop.frozen and loop.stretch is None:
                continue
            stretch, loop.stretch = loop.stretch, None
            if stretch is not None:  # every token, to last the frozen window and then some
                ttl = max(self.ttl, stretch + self.ttl)
                error = self._renew_due(handle, instance, current, in_view, ttl=ttl, force=True)
                if error is None:
                    error = await self._rekey_view(instance, current, in_view)
                loop.frozen = True
                loop.stretched.set()
                if error is not None:
                    self._failed(handle, error)
                continue
            force, loop.renew_all = loop.renew_all, False
            error = self._renew_due(handle, instance, current, in_view, force=force)
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
        *,
        ttl: float | None = None,
        force: bool = False,
    ) -> str | None:
        """Renew every token that is due (``force``: every one), for ``ttl`` seconds (the
        app's by default), each at once in the broker (no await between the check and the
        swap); the first failure, or None."""
        now = time.time()
        error = None
        for old in list(current):
            if _due(old) > now and not force:
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
                new = self._authority.renew(old, ttl=ttl or self.ttl, now=now)
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


@dataclass(slots=True)
class _Loop:
    """What the renewal loop of one container is asked to do beside renewing on time."""

    wake: anyio.Event = field(default_factory=anyio.Event)
    stretch: float | None = None  # renew every token to outlast a freeze of this long
    stretched: anyio.Event = field(default_factory=anyio.Event)
    frozen: bool = False  # renew nothing until thawed
    renew_all: bool = False  # thawed: every token, now


async def _wait_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _due(token: Token) -> float:
    """When ``token`` is due for renewal (Unix time)."""
    claims = token.claims
    return claims.iat + RENEW_AT * (claims.exp - claims.iat)
