"""The ``requires`` graph: start order and dependency cycles.

Pure graph work on names: no manifests, no files, no reporting.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence

__all__ = ["find_cycles", "start_order"]


def start_order(requires: Mapping[str, Sequence[str]], listed: Sequence[str]) -> tuple[str, ...]:
    """Features in an order where each comes after everything it requires.

    Ties are broken by the order in ``listed`` (the app's features list). A feature
    that is in a cycle, requires one, or requires a name not in ``listed`` is left out.
    """
    rank = {name: index for index, name in enumerate(listed)}
    waiting: dict[str, int] = {}
    dependants: dict[str, list[str]] = {name: [] for name in listed}
    blocked: set[str] = set()
    for name in listed:
        deps = set(requires.get(name, ()))
        if any(dep not in rank for dep in deps):
            blocked.add(name)
        waiting[name] = len(deps)
        for dep in deps:
            if dep in dependants:
                dependants[dep].append(name)
    ready = [rank[name] for name in listed if waiting[name] == 0 and name not in blocked]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = listed[heapq.heappop(ready)]
        order.append(name)
        for dependant in dependants[name]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0 and dependant not in blocked:
                heapq.heappush(ready, rank[dependant])
    return tuple(order)


def _components(requires: Mapping[str, Sequence[str]], listed: Sequence[str]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), members in listed order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    rank = {name: i for i, name in enumerate(listed)}

    def edges(name: str) -> list[str]:
        return [dep for dep in requires.get(name, ()) if dep in rank]

    for root in listed:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges(node)
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component, key=rank.__getitem__))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _shortest_cycle(
    requires: Mapping[str, Sequence[str]], members: set[str], start: str
) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``members`` (breadth first)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for dep in requires.get(node, ()):
            if dep == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if dep in members and dep not in parent:
                parent[dep] = node
                queue.append(dep)
    raise AssertionError(f"{start} is not on a cycle")  # pragma: no cover - components guarantee it


def find_cycles(requires: Mapping[str, Sequence[str]], listed: Sequence[str]) -> list[list[str]]:
    """One cycle per group of features that require each other, as ``[a, b, c, a]``.

    Each cycle is a shortest one through the group's first feature in ``listed``;
    cycles come in listed order.
    """
    cycles: list[list[str]] = []
    for component in _components(requires, listed):
        start = component[0]
        if len(component) == 1 and start not in requires.get(start, ()):
            continue
        cycles.append(_shortest_cycle(requires, set(component), start))
    rank = {name: i for i, name in enumerate(listed)}
    cycles.sort(key=lambda cycle: rank[cycle[0]])
    return cycles
