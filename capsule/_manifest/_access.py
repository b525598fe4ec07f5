"""Reading ``[access]`` requests and ``[policy.NAME]`` approvals into capabilities.

Checks each entry on its own: it must not compare requests with approvals, look at
other features or touch the file system.

The mapping, the same on both sides::

    call = ["dictionary.lookup"]      -> icc:call:dictionary.lookup   ("dictionary.*" allowed)
    publish = ["spell.*"]             -> icc:publish:spell.*
    subscribe = ["editor.changed"]    -> icc:subscribe:editor.changed
    fs = [{ path = "/data", mode = "ro" }]   -> fs:read:/data/   (rw: fs:read,write:/data/)
    net = ["127.0.0.1:8080"]          -> net:connect:127.0.0.1:8080   ("?conns=N" caps it)
    listen = ["127.0.0.1:8080"]       -> net:listen:127.0.0.1:8080

A policy also has ``env`` (see ``capsule._manifest._env``), ``limits`` (see
``capsule._manifest._budget``) and ``update`` (see ``capsule._manifest._updates``), which
are no capabilities and which [access] cannot ask for: the app alone sets a feature's
environment, what it may make the broker hold and how a new version of it takes over.
"""

from __future__ import annotations

import re
from typing import Final, final

import msgspec

from capsule._manifest._budget import read_broker_limits
from capsule._manifest._env import read_env
from capsule._manifest._locator import KeyPath, format_key
from capsule._manifest._model import (
    Access,
    FsApproval,
    FsRequest,
    Mode,
    Policy,
    fs_capability,
)
from capsule._manifest._ondemand import START_KEYS, read_start_policy
from capsule._manifest._reader import Table
from capsule._manifest._updates import UPDATE_IN_BUNDLE, read_update_policy
from capsule._manifest._variant_policy import read_variant_policy
from capsule._tokens._caps import Capability, parse_capability
from capsule._units import parse_size
from capsule.errors import ConfigError

__all__ = [
    "ACCESS_KEYS",
    "VOLUME_NAME",
    "Approval",
    "Request",
    "approvals_of",
    "check_view_path",
    "read_access",
    "read_policy",
    "view_path",
]

ACCESS_KEYS: Final = ("call", "publish", "subscribe", "fs", "net", "listen")
VOLUME_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_MODES: Final[tuple[Mode, ...]] = ("ro", "rw")
#: the modes an app may approve: a feature asks for ro or rw; the app also chooses how a
#: writable view is backed (cow: a copy-on-write layer over the volume; private: storage
#: of the feature's own, no volume)
_POLICY_MODES: Final = ("ro", "rw", "cow", "private")
_MAX_INODES: Final = 1 << 40


@final
class Request(msgspec.Struct, frozen=True, kw_only=True):
    """One requested capability and the key it was written at in capsule.toml."""

    key: KeyPath
    text: str
    capability: Capability
    fs: FsRequest | None = None


@final
class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """One approved capability and the key it was written at in app.toml.

    ``broken`` marks an fs entry whose path is valid but whose other keys are not: it
    grants nothing, and requests under its path are not reported a second time.
    """

    key: KeyPath
    capability: Capability
    fs: FsApproval | None = None
    broken: bool = False


def _reason(exc: ConfigError, text: str) -> str:
    prefix = f"capability {text!r}: "
    return exc.message.removeprefix(prefix)


def check_view_path(value: str) -> str | None:
    """An error message for a mount point that is not absolute and clean, else None."""
    if value in ("", "/"):
        return f'mount point "{value}" is the root of the view; use a directory such as "/data"'
    path = value[:-1] if value.endswith("/") else value
    text = f"fs:read:{path}/"
    try:
        parse_capability(text)
    except ConfigError as exc:
        return f'mount point "{value}": {_reason(exc, text)}'
    return None


def view_path(value: str) -> str:
    """A checked mount point without its trailing slash."""
    return value[:-1] if value.endswith("/") else value


def _names(table: Table, name: str, kind: str, action: str) -> list[tuple[KeyPath, Capability]]:
    def text(value: str) -> str:
        return f"{kind}:{action}:{value}"

    def check(value: str) -> str | None:
        try:
            parse_capability(text(value))
        except ConfigError as exc:
            return f'{name} entry "{value}": {_reason(exc, text(value))}'
        return None

    return [(key, parse_capability(text(value))) for key, value in table.strings(name, check)]


def _mode(value: str | None) -> Mode:
    return "rw" if value == "rw" else "ro"


def _icc_and_net(table: Table) -> dict[str, list[tuple[KeyPath, Capability]]]:
    return {
        "call": _names(table, "call", "icc", "call"),
        "publish": _names(table, "publish", "icc", "publish"),
        "subscribe": _names(table, "subscribe", "icc", "subscribe"),
        "net": _names(table, "net", "net", "connect"),
        "listen": _names(table, "listen", "net", "listen"),
    }


def _fs_entries(table: Table, allowed: tuple[str, ...], example: str) -> list[Table]:
    entries: list[Table] = []
    seen: dict[str, KeyPath] = {}
    for key, item in table.array("fs"):
        if not isinstance(item, dict):
            table.doc.error(key, f"each fs entry must be an inline table like {example}")
            continue
        entry = Table(table.doc, key, item)
        entry.allow(*allowed)
        path = entry.string("path", required='path = "/data/words"', check=check_view_path)
        if path is None:
            continue
        path = view_path(path)
        if path in seen:
            table.doc.error(
                (*key, "path"),
                f'mount point "{path}" is listed twice (also at {format_key(seen[path])})',
            )
            continue
        seen[path] = key
        entries.append(entry)
    return entries


def read_access(table: Table | None) -> tuple[Access, tuple[Request, ...]]:
    """The ``[access]`` table of a capsule.toml: what the feature asks for."""
    if table is None:
        return Access(), ()
    table.allow(*ACCESS_KEYS, "env", refused=("update",))
    if "env" in table:
        table.doc.error(
            (*table.key, "env"),
            "a feature cannot set its own environment: the app sets variables for it in "
            "env of its [policy.NAME] table in app.toml; valid keys here: "
            + ", ".join(ACCESS_KEYS),
        )
    if "update" in table:
        table.doc.error((*table.key, "update"), UPDATE_IN_BUNDLE)
    icc = _icc_and_net(table)
    requests = [
        Request(key=key, text=f'{name} "{cap.target}"', capability=cap)
        for name in ("call", "publish", "subscribe")
        for key, cap in icc[name]
    ]
    fs: list[FsRequest] = []
    example = '{ path = "/data/words", mode = "ro" }'
    for entry in _fs_entries(table, ("path", "mode", "volume"), example):
        if "volume" in entry:
            entry.doc.error(
                (*entry.key, "volume"),
                "a feature cannot choose its volume: the app binds one in the fs entry of "
                "its [policy.NAME] table in app.toml; valid keys here: path, mode",
            )
        mode = entry.choice("mode", _MODES)
        if mode is None and "mode" in entry:
            continue
        request = FsRequest(path=view_path(str(entry.data["path"])), mode=_mode(mode))
        fs.append(request)
        text = f'fs "{request.path}" ({request.mode})'
        requests.append(
            Request(key=entry.key, text=text, capability=request.capability, fs=request)
        )
    requests += [
        Request(key=key, text=f'{name} "{cap.target}"', capability=cap)
        for name in ("net", "listen")
        for key, cap in icc[name]
    ]
    access = Access(
        call=tuple(cap.target for _, cap in icc["call"]),
        publish=tuple(cap.target for _, cap in icc["publish"]),
        subscribe=tuple(cap.target for _, cap in icc["subscribe"]),
        fs=tuple(fs),
        net=tuple(cap.target for _, cap in icc["net"]),
        listen=tuple(cap.target for _, cap in icc["listen"]),
    )
    return access, tuple(requests)


def _check_volume_ref(value: str) -> str | None:
    name, _, sub = value.partition("/")
    if not VOLUME_NAME.fullmatch(name):
        return (
            f'volume "{value}": expected a volume name from [volumes] (lower-case letters, '
            'digits, "-" and "_"), optionally followed by /sub/dir, e.g. "words" or "notes/public"'
        )
    if sub and any(part in ("", ".", "..") for part in sub.split("/")):
        return f'volume "{value}": the subdirectory must not contain "..", "." or empty segments'
    return None


def _policy_fs(entry: Table) -> FsApproval | None:
    """One fs entry of a [policy.NAME] table, or None (reported) when it is broken."""
    mode = entry.choice("mode", _POLICY_MODES)
    if mode is None and "mode" in entry:
        return None
    mode = mode or "ro"
    if mode == "private":
        volume: str | None = ""
        if "volume" in entry:
            entry.doc.error(
                (*entry.key, "volume"),
                'mode = "private" is storage of the feature\'s own: remove volume, or use '
                'mode = "rw" or "cow" to show a volume',
            )
            volume = None
    else:
        volume = entry.string("volume", required='volume = "words"', check=_check_volume_ref)
    quota = entry.converted("quota", parse_size)
    inodes = entry.integer("inodes", minimum=1, maximum=_MAX_INODES)
    broken = volume is None or (quota is None and "quota" in entry)
    broken = broken or (inodes is None and "inodes" in entry)
    for key, value in (("quota", quota), ("inodes", inodes)):
        if value is not None and mode == "ro":
            entry.doc.error(
                (*entry.key, key),
                f'{key} applies to writable views only: set mode = "rw", "cow" or '
                f'"private", or remove {key}',
            )
            broken = True
    if quota == 0:
        entry.doc.error((*entry.key, "quota"), "quota must be more than 0 bytes")
        broken = True
    if broken or volume is None:
        return None
    return FsApproval(
        path=view_path(str(entry.data["path"])),
        volume=volume,
        mode="ro" if mode == "ro" else "rw",
        quota=quota,
        inodes=inodes,
        storage="cow" if mode == "cow" else "private" if mode == "private" else "volume",
    )


def read_policy(table: Table) -> tuple[Policy, tuple[Approval, ...]]:
    """One ``[policy.NAME]`` table of an app.toml: what the app approves for NAME."""
    table.allow(*ACCESS_KEYS, "env", "limits", "update", "variants", *START_KEYS)
    icc = _icc_and_net(table)
    approvals = [Approval(key=key, capability=cap) for name in icc for key, cap in icc[name]]
    fs: list[FsApproval] = []
    example = '{ path = "/data/words", volume = "words", mode = "ro" }'
    keys = ("path", "volume", "mode", "quota", "inodes")
    for entry in _fs_entries(table, keys, example):
        approval = _policy_fs(entry)
        if approval is None:
            widest = fs_capability(view_path(str(entry.data["path"])), "rw")
            approvals.append(Approval(key=entry.key, capability=widest, broken=True))
            continue
        fs.append(approval)
        approvals.append(Approval(key=entry.key, capability=approval.capability, fs=approval))
    policy = Policy(
        call=tuple(cap.target for _, cap in icc["call"]),
        publish=tuple(cap.target for _, cap in icc["publish"]),
        subscribe=tuple(cap.target for _, cap in icc["subscribe"]),
        fs=tuple(fs),
        net=tuple(cap.target for _, cap in icc["net"]),
        listen=tuple(cap.target for _, cap in icc["listen"]),
        env=read_env(table),
        limits=read_broker_limits(table.table("limits")),
        update=read_update_policy(table),
        variants=read_variant_policy(table),
        start=read_start_policy(table),
    )
    return policy, tuple(approvals)


def approvals_of(policy: Policy, key: KeyPath) -> tuple[Approval, ...]:
    """The approvals of a policy already read (of a loaded app), each at the key of its
    entry under ``key`` (``("policy", "NAME")`` or ``("plugins",)``)."""
    named = (
        ("call", "icc:call:", policy.call),
        ("publish", "icc:publish:", policy.publish),
        ("subscribe", "icc:subscribe:", policy.subscribe),
        ("net", "net:connect:", policy.net),
        ("listen", "net:listen:", policy.listen),
    )
    approvals = [
        Approval(key=(*key, name, index), capability=parse_capability(prefix + target))
        for name, prefix, targets in named
        for index, target in enumerate(targets)
    ]
    approvals += [
        Approval(key=(*key, "fs", index), capability=fs.capability, fs=fs)
        for index, fs in enumerate(policy.fs)
    ]
    return tuple(approvals)
