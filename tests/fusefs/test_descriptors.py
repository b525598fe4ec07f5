"""The bounded descriptor set of a view's node table, with real descriptors: at most its
capacity stays open, oldest out first, and nothing is closed before ``settle``."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fusefs._descriptors import DEFAULT_CAPACITY, Descriptors, capacity_for


@dataclass
class _Node:
    ino: int
    fd: int = -1


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _give(descriptors: Descriptors, node: _Node, **options: bool) -> int:
    """A new descriptor of /dev/null, owned by ``node`` (and closed by ``descriptors``)."""
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    descriptors.add(node, fd, **options)
    return fd


def test_the_oldest_descriptor_goes_past_capacity_but_stays_open_until_settle() -> None:
    descriptors = Descriptors(3)
    nodes = [_Node(ino) for ino in range(5)]
    fds = [_give(descriptors, node) for node in nodes]
    assert [n.fd for n in nodes] == [-1, -1, *fds[2:]]  # the first two were evicted
    assert all(_is_open(fd) for fd in fds)  # a handler may still be using them
    descriptors.settle()
    assert [_is_open(fd) for fd in fds] == [False, False, True, True, True]
    descriptors.close()


def test_roots_are_never_evicted_and_unlinked_files_are_bounded_too() -> None:
    descriptors = Descriptors(2)
    root = _Node(0)
    root_fd = _give(descriptors, root, root=True)
    unlinked = [_Node(ino) for ino in range(1, 5)]
    for node in unlinked:
        _give(descriptors, node)
        descriptors.pin(node)  # each is unlinked right after its lookup
    for ino in range(5, 10):
        _give(descriptors, _Node(ino))
    descriptors.settle()
    assert root.fd == root_fd
    assert _is_open(root_fd)
    assert [n.fd >= 0 for n in unlinked] == [False, False, True, True]
    descriptors.close()
    assert not _is_open(root_fd)


def test_a_forgotten_node_is_closed_and_close_closes_everything() -> None:
    descriptors = Descriptors(8)
    root, kept, gone = _Node(0), _Node(1), _Node(2)
    fds = [
        _give(descriptors, root, root=True),
        _give(descriptors, kept),
        _give(descriptors, gone),
    ]
    descriptors.discard(gone)
    assert gone.fd == -1
    descriptors.settle()
    assert [_is_open(fd) for fd in fds] == [True, True, False]
    descriptors.close()
    assert not any(_is_open(fd) for fd in fds)
    assert (root.fd, kept.fd) == (-1, -1)


def test_the_capacity_is_a_quarter_of_the_open_file_limit_within_bounds() -> None:
    assert capacity_for(1 << 20) == DEFAULT_CAPACITY
    assert capacity_for(4096) == 1024
    assert capacity_for(100) == 64  # a handler holds a few at once, whatever the limit
