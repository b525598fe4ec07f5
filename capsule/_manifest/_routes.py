"""Routes between features: every call has a provider, every subscription a publisher.

Looks at services, topics and capabilities only: it must not decide grants or read files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from capsule._manifest._feature import ParsedFeature
from capsule._manifest._model import FeatureGrant, FeatureManifest, Route
from capsule._manifest._reader import suggest
from capsule._tokens._caps import ACTIONS, target_covers

__all__ = ["build_routes", "check_routes"]

_CALL = ACTIONS["icc"]["call"]
_PUBLISH = ACTIONS["icc"]["publish"]
_SUBSCRIBE = ACTIONS["icc"]["subscribe"]


def _check_call(
    feature: ParsedFeature,
    key: tuple[str | int, ...],
    target: str,
    services: Mapping[str, tuple[str, ...]],
    unreadable: Callable[[str], bool],
    *,
    plugins: bool,
) -> None:
    provider, _, service = target.partition(".")
    if provider not in services:
        if unreadable(provider):
            return
        if plugins:
            feature.doc.warning(
                key,
                f'call "{target}": the app has no feature "{provider}"'
                f"{suggest(provider, services)}; only a plugin installed while it runs "
                "([plugins] in app.toml) can answer it",
            )
        else:
            feature.doc.error(
                key,
                f'call "{target}": the app has no feature "{provider}"'
                f"{suggest(provider, services)}; its features: {', '.join(services)}",
            )
        return
    offered = services[provider]
    if service == "*":
        if not offered:
            feature.doc.error(key, f'call "{target}": feature "{provider}" provides no services')
        return
    if service not in offered:
        listing = ", ".join(offered) if offered else "none"
        feature.doc.error(
            key,
            f'call "{target}": feature "{provider}" does not provide service "{service}"'
            f"{suggest(service, offered)}; it provides: {listing}",
        )


def check_routes(
    features: Mapping[str, ParsedFeature],
    unreadable: Callable[[str], bool],
    providers: Mapping[str, FeatureManifest] | None = None,
    *,
    plugins: bool = False,
) -> None:
    """Report calls to services nobody provides and subscriptions nobody publishes to.

    ``unreadable(name)`` is true for a name that may belong to a bundle that could
    not be read; calls to it are not reported again. ``providers`` are the features whose
    services and topics count (every feature of the app); by default ``features``.
    With ``plugins`` (the app has a ``[plugins]`` table), a call to a feature the app does
    not have is a warning: a plugin may provide it once installed.
    """
    if providers is None:
        providers = {name: parsed.manifest for name, parsed in features.items()}
    services = {name: manifest.services for name, manifest in providers.items()}
    topics = sorted({topic for manifest in providers.values() for topic in manifest.topics})
    for parsed in features.values():
        for request in parsed.requests:
            cap = request.capability
            if cap.kind != "icc":
                continue
            if cap.actions == _CALL:
                _check_call(parsed, request.key, cap.target, services, unreadable, plugins=plugins)
            elif cap.actions == _SUBSCRIBE and not any(
                target_covers("icc", cap.target, topic) for topic in topics
            ):
                published = ", ".join(topics) if topics else "none"
                parsed.doc.warning(
                    request.key,
                    f'subscribe "{cap.target}" matches no topic that a feature of the app '
                    f"publishes ([provides] topics); published topics: {published}",
                )


def build_routes(
    features: Mapping[str, FeatureManifest], grants: Mapping[str, FeatureGrant]
) -> tuple[Route, ...]:
    """Every call and event path the grants allow between the features, in app order."""

    def granted(name: str, action: int) -> list[str]:
        grant = grants.get(name)
        if grant is None:
            return []
        return [c.target for c in grant.capabilities if c.kind == "icc" and c.actions & action]

    def allows(patterns: list[str], name: str) -> bool:
        return any(target_covers("icc", pattern, name) for pattern in patterns)

    calls = [
        Route(kind="call", source=source, target=provider, name=service)
        for source in features
        for provider, manifest in features.items()
        for service in manifest.services
        if allows(granted(source, _CALL), f"{provider}.{service}")
    ]
    events = [
        Route(kind="event", source=publisher, target=subscriber, name=topic)
        for publisher, manifest in features.items()
        for topic in manifest.topics
        if allows(granted(publisher, _PUBLISH), topic)
        for subscriber in features
        if allows(granted(subscriber, _SUBSCRIBE), topic)
    ]
    return (*calls, *events)
