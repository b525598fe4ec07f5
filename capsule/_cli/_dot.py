"""``capsule graph`` output: an app's features, routes, volumes and destinations as Graphviz DOT.

Presentation only: it draws what a CheckReport says and decides nothing itself.
"""

from __future__ import annotations

from capsule._manifest import CheckReport
from capsule._tokens._caps import format_actions
from capsule._units import format_size

__all__ = ["render_dot"]


def _quote(text: str) -> str:
    """A DOT double-quoted string; line breaks become DOT's centred ``\\n``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _attrs(**values: str) -> str:
    return "[" + ", ".join(f"{name}={_quote(value)}" for name, value in values.items()) + "]"


def _storage_and_network_nodes(report: CheckReport) -> list[str]:
    """The nodes of volumes, private storage and network destinations that grants name."""
    volumes: dict[str, None] = {}
    private: dict[str, None] = {}
    destinations: dict[str, None] = {}
    for feature, grant in report.grants.items():
        for mount in grant.mounts:
            if mount.storage == "private":
                private.setdefault(feature)
            else:
                volumes.setdefault(mount.volume.partition("/")[0])
        for cap in grant.capabilities:
            if cap.kind == "net":
                destinations.setdefault(cap.target)
    lines: list[str] = []
    if volumes:
        lines += ["", "    // volumes (host directories)"]
    for volume in volumes:
        attrs = _attrs(label=f"volume {volume}", shape="cylinder")
        lines.append(f"    {_quote('volume:' + volume)} {attrs};")
    if private:
        lines += ["", "    // private storage (one per feature, no volume)"]
    for feature in private:
        attrs = _attrs(label=f"{feature}'s\nprivate storage", shape="folder")
        lines.append(f"    {_quote('private:' + feature)} {attrs};")
    if destinations:
        lines += ["", "    // network destinations"]
    for target in destinations:
        lines.append(f"    {_quote('net:' + target)} {_attrs(label=target, shape='diamond')};")
    return lines


def render_dot(report: CheckReport) -> str:
    """The whole graph; node ids are ``feature:NAME``, ``volume:NAME``, ``private:FEATURE``
    and ``net:HOST:PORT``."""
    name = report.app.name if report.app is not None else report.root.name
    graph = _attrs(rankdir="LR", fontname="Helvetica", labelloc="t", label=f"app {name}")
    lines = [
        f"digraph {_quote(name)} {{",
        f"    graph {graph};",
        f"    node {_attrs(fontname='Helvetica', fontsize='11')};",
        f"    edge {_attrs(fontname='Helvetica', fontsize='9')};",
        "",
        "    // features, in start order first",
    ]
    ordered = [*report.start_order, *(f for f in report.features if f not in report.start_order)]
    for feature in ordered:
        manifest = report.features[feature]
        on_demand = report.app is not None and report.app.start_policy(feature).on_demand
        attrs = _attrs(
            label=f"{feature}\n{manifest.version}" + ("\n(on demand)" if on_demand else ""),
            shape="box",
            style="rounded,dashed" if on_demand else "rounded",
        )
        lines.append(f"    {_quote('feature:' + feature)} {attrs};")
    lines += _storage_and_network_nodes(report)
    lines += ["", "    // requires: start order dependencies"]
    for feature in ordered:
        for dep in report.features[feature].requires:
            if dep in report.features:
                edge = f"{_quote('feature:' + feature)} -> {_quote('feature:' + dep)}"
                lines.append(
                    f"    {edge} {_attrs(label='requires', style='dashed', color='gray50')};"
                )
    lines += ["", "    // calls (caller -> provider) and events (publisher -> subscriber)"]
    for route in report.routes:
        edge = f"{_quote('feature:' + route.source)} -> {_quote('feature:' + route.target)}"
        if route.kind == "call":
            attrs = _attrs(label=route.name, color="navy")
        else:
            attrs = _attrs(label=route.name, color="darkgreen", style="bold", arrowhead="vee")
        lines.append(f"    {edge} {attrs};")
    lines += ["", "    // file-system views and network connections"]
    for feature, grant in report.grants.items():
        source = _quote("feature:" + feature)
        for mount in grant.mounts:
            label = f"{'cow' if mount.storage == 'cow' else mount.mode} {mount.view}"
            _, _, sub = mount.volume.partition("/")
            if sub:
                label += f"\n({sub}/)"
            if mount.quota is not None:
                label += f"\nquota {format_size(mount.quota)}"
            if mount.storage == "private":
                target = _quote("private:" + feature)
            else:
                target = _quote("volume:" + mount.volume.partition("/")[0])
            style = "bold" if mount.mode == "rw" else "solid"
            lines.append(f"    {source} -> {target} {_attrs(label=label, style=style)};")
        for cap in grant.capabilities:
            if cap.kind == "net":
                target = _quote("net:" + cap.target)
                verb = format_actions(cap.kind, cap.actions)  # connect, listen
                lines.append(f"    {source} -> {target} {_attrs(label=verb, color='firebrick')};")
    lines.append("}")
    return "\n".join(lines) + "\n"
