"""The authority each feature receives: its requests intersected with the app's approvals.

Decides grants and reports unapproved requests; it must not mint tokens or mount
anything (it only names the host directory behind each view).

A requested capability is granted when ONE approved capability covers it on its own
(the attenuation rule of ``capsule._tokens._caps``); two narrow approvals are never
combined into a wider one. A granted view under an approved one is backed by the
matching subdirectory of the approval's volume: ``/data/words/en`` under an approved
``/data/words`` on volume ``words`` is ``words/en``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from capsule._manifest._access import Approval, Request
from capsule._manifest._app import ParsedPolicy, volume_dir
from capsule._manifest._feature import ParsedFeature
from capsule._manifest._locator import KeyPath
from capsule._manifest._model import FeatureGrant, MountGrant
from capsule._manifest._problems import Doc
from capsule._tokens._caps import Capability, cover, target_covers
from capsule.errors import InternalError

__all__ = ["grant_feature"]


def _covering(
    request: Capability, approvals: tuple[Approval, ...]
) -> tuple[Approval, Capability] | None:
    """The first approval that covers ``request`` alone, and the request narrowed by it
    (it inherits the approval's limits, such as an fs quota)."""
    found = cover(request, [approval.capability for approval in approvals])
    if found is None:
        return None
    index, granted = found
    return approvals[index], granted


def _why_not(request: Request, approvals: tuple[Approval, ...]) -> str:
    """A hint naming the closest approval when it only lacks an action."""
    cap = request.capability
    for approval in approvals:
        other = approval.capability
        if other.kind == cap.kind and target_covers(cap.kind, other.target, cap.target):
            if request.fs is not None and approval.fs is not None:
                return f' approves "{approval.fs.path}" {approval.fs.mode} only'
            return f" approves only {other}"
    return ""


def _mount(
    request: Request,
    approval: Approval,
    volumes: Mapping[str, Path],
    feature_doc: Doc,
) -> MountGrant | None:
    """The host directory behind a granted view, or None (reported) when there is none."""
    if request.fs is None or approval.fs is None:  # pragma: no cover - fs covers fs only
        raise InternalError("an fs request was matched with a non-fs approval")
    writable = request.fs.mode == "rw"
    if approval.fs.storage == "private":
        return MountGrant(
            view=request.fs.path,
            host=None,
            mode=request.fs.mode,
            volume="",
            quota=approval.fs.quota if writable else None,
            inodes=approval.fs.inodes if writable else None,
            storage="private",
        )
    if volume_dir(volumes, approval.fs.volume) is None:
        return None  # an unknown or missing volume is reported where app.toml names it
    below = PurePosixPath(request.fs.path).relative_to(PurePosixPath(approval.fs.path))
    reference = "/".join((approval.fs.volume, *below.parts))
    host = volume_dir(volumes, reference)
    if host is None:
        feature_doc.error(
            request.key,
            f'{request.text} is approved from volume "{approval.fs.volume}", but '
            f'"{below.as_posix()}" is not a directory inside it: create it or request '
            f'"{approval.fs.path}"',
        )
        return None
    return MountGrant(
        view=request.fs.path,
        host=host,
        mode=request.fs.mode,
        volume=reference,
        quota=approval.fs.quota if writable else None,
        inodes=approval.fs.inodes if writable else None,
        storage=approval.fs.storage if writable else "volume",
    )


def grant_feature(
    feature: ParsedFeature,
    policy: ParsedPolicy | None,
    volumes: Mapping[str, Path],
    app_doc: Doc,
    *,
    table: str | None = None,
    unapproved: list[KeyPath] | None = None,
) -> FeatureGrant:
    """Intersect one feature's requests with its ``[policy.NAME]``; report what is not approved.

    ``table`` names the policy table in messages (``[plugins]`` for a plugin); the key of
    each request that is not approved is also added to ``unapproved`` when given.
    """
    name = feature.manifest.name
    table = table or f"[policy.{name}]"
    approvals = () if policy is None else policy.approvals
    capabilities: list[Capability] = []
    mounts: list[MountGrant] = []
    for request in feature.requests:
        found = _covering(request.capability, approvals)
        if found is None:
            if policy is None:
                reason = (
                    f"{app_doc.path} has no {table} table, so {name} is granted nothing; "
                    "add one that approves it, or remove the request"
                )
            else:
                hint = _why_not(request, approvals)
                reason = (
                    f"{table} in {app_doc.path}{hint or ' does not cover it'}; "
                    "approve it there or remove the request"
                )
            feature.doc.error(
                request.key, f"{request.text} ({request.capability}) is not approved: {reason}"
            )
            if unapproved is not None:
                unapproved.append(request.key)
            continue
        approval, granted = found
        if approval.broken:
            continue  # the approval itself is reported in app.toml
        if request.fs is not None:
            mount = _mount(request, approval, volumes, feature.doc)
            if mount is None:
                continue
            mounts.append(mount)
        capabilities.append(granted)
    env = () if policy is None else policy.policy.env
    return FeatureGrant(
        feature=name, capabilities=tuple(capabilities), mounts=tuple(mounts), env=env
    )
