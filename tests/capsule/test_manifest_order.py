"""Start order and requires cycles: examples and properties over generated graphs."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from capsule._manifest._order import find_cycles, start_order

NAMES = [f"f{i}" for i in range(8)]


def test_dependencies_first_ties_in_listed_order() -> None:
    requires = {"editor": ["spell", "export"], "spell": ["dict"], "export": [], "dict": []}
    listed = ["editor", "spell", "dict", "export", "plugin"]
    assert start_order(requires, listed) == ("dict", "spell", "export", "editor", "plugin")


def test_cycles_and_their_dependants_are_left_out() -> None:
    requires = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": [], "f": ["gone"]}
    listed = ["a", "b", "c", "d", "e", "f"]
    assert start_order(requires, listed) == ("e",)
    assert find_cycles(requires, listed) == [["a", "b", "c", "a"]]


def test_each_cycle_starts_at_its_first_listed_feature_and_is_shortest() -> None:
    requires = {"x": ["y"], "y": ["z", "w"], "z": ["x"], "w": ["y"], "s": ["s"]}
    listed = ["s", "w", "x", "y", "z"]
    assert find_cycles(requires, listed) == [["s", "s"], ["w", "y", "w"]]


def test_no_cycles_in_a_chain() -> None:
    assert find_cycles({"a": ["b"], "b": ["c"]}, ["a", "b", "c"]) == []


graphs = st.dictionaries(
    st.sampled_from(NAMES), st.lists(st.sampled_from(NAMES), max_size=3, unique=True)
)


def _reaches(requires: dict[str, list[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(requires.get(start, []))
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(requires.get(node, []))
    return False


@given(graphs)
def test_start_order_properties(requires: dict[str, list[str]]) -> None:
    order = start_order(requires, NAMES)
    position = {name: i for i, name in enumerate(order)}
    assert len(order) == len(set(order))
    for name in order:
        assert all(position[dep] < position[name] for dep in requires.get(name, []))
    on_cycle = {name for name in NAMES if _reaches(requires, name, name)}
    for name in NAMES:
        blocked = any(_reaches(requires, name, c) or name == c for c in on_cycle)
        assert (name in position) == (not blocked)


@given(graphs)
def test_find_cycles_properties(requires: dict[str, list[str]]) -> None:
    cycles = find_cycles(requires, NAMES)
    on_cycle = {name for name in NAMES if _reaches(requires, name, name)}
    assert bool(cycles) == bool(on_cycle)
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        assert all(b in requires[a] for a, b in itertools.pairwise(cycle))
        assert len(set(cycle[:-1])) == len(cycle) - 1
    covered = {name for cycle in cycles for name in cycle}
    # every node on a cycle shares a group with a reported one
    for name in on_cycle:
        assert any(_reaches(requires, name, c) and _reaches(requires, c, name) for c in covered)
