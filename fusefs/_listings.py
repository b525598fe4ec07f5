"""The listings of one view's open directories, and the memory budget they share.

A listing is the snapshot of a directory's names taken at ``opendir`` and held until
``releasedir``, so that ``readdir`` offsets stay stable and resumable. What the open
listings hold together is bounded by the view's ``listing_bytes``: a container that holds
more open directories than that gets ENOMEM on its next ``opendir``, and the server's
memory stays within its budget. Does no file-system call and no policy decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fusefs._nodes import Node

__all__ = ["Listing", "Listings"]

#: what a listing costs beyond its names: per entry (the bytes object and its slot in the
#: list) and per listing (the handle and its entry in the table)
ENTRY_COST: Final = 64
LISTING_COST: Final = 256


@dataclass(slots=True)
class Listing:
    node: Node
    names: list[bytes]
    cost: int  # bytes charged to the budget until released


class Listings:
    """Open listings by file handle, and what they hold against ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget: Final = budget
        self.held = 0  # what the open listings cost now
        self._by_fh: dict[int, Listing] = {}

    def __getitem__(self, fh: int) -> Listing:
        return self._by_fh[fh]

    def __len__(self) -> int:
        return len(self._by_fh)

    @staticmethod
    def cost(names: list[bytes]) -> int:
        return LISTING_COST + sum(map(len, names)) + ENTRY_COST * len(names)

    def over(self, names: list[bytes]) -> str | None:
        """Why holding ``names`` too would exceed the budget, or None if it fits."""
        total = self.held + self.cost(names)
        if total <= self.budget:
            return None
        return (
            f"open directory listings would hold {total} bytes, more than the view's "
            f"{self.budget} (close directories to list more)"
        )

    def add(self, fh: int, node: Node, names: list[bytes]) -> None:
        """Hold ``names`` for ``fh`` (after :meth:`over` said they fit)."""
        listing = Listing(node, names, self.cost(names))
        self._by_fh[fh] = listing
        self.held += listing.cost

    def release(self, fh: int) -> None:
        listing = self._by_fh.pop(fh, None)
        if listing is not None:
            self.held -= listing.cost
