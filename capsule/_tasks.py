"""Starting background tasks: what the runtime's parts need of a task group, and Services,
a starter whose tasks outlive a cancellation of the block around them until closed.

Task plumbing only: it knows nothing of features, containers or messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, final

import anyio
import anyio.abc

__all__ = ["Services", "TaskStarter"]


class TaskStarter(Protocol):
    """What a part needs to run tasks in the background (an anyio TaskGroup has it)."""

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: object, name: object = None
    ) -> None: ...


@final
class Services:
    """Starts tasks in a task group, each inside a shielded cancel scope.

    When the scope around the task group is cancelled (the host program cancels the block
    running an app), these tasks go on, so the app can still be shut down properly: exit
    reports read, stop messages written. :meth:`cancel` ends the ones still running; call
    it once the shutdown they serve is done.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._tg = task_group
        self._scopes: set[anyio.CancelScope] = set()
        self._cancelled = False

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: object, name: object = None
    ) -> None:
        async def shielded() -> None:
            with anyio.CancelScope(shield=True) as scope:
                if self._cancelled:
                    return
                self._scopes.add(scope)
                try:
                    await func(*args)
                finally:
                    self._scopes.discard(scope)

        self._tg.start_soon(shielded, name=name or getattr(func, "__qualname__", None))

    def cancel(self) -> None:
        """Cancel every task still running, and any started from now on."""
        self._cancelled = True
        for scope in list(self._scopes):
            scope.cancel()
