"""What every FUSE handler of a view shares: the errno boundary, name checks, and the
attributes a backing file is shown with.

Must not resolve, check a policy or touch a backing file: the handlers (``_handlers``,
``_changes``, ``_ops``) do that, with these.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar

import pyfuse3
import trio

from fusefs._nodes import NodeTable

__all__ = ["STRIP", "errno_boundary", "fill", "in_worker", "valid_name"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
#: the set-id bits: never shown, never set
STRIP: Final = stat.S_ISUID | stat.S_ISGID
_SHOWN: Final = ~STRIP
_SHOWN_READ_ONLY: Final = ~(STRIP | 0o222)


class _Settles(Protocol):
    nodes: NodeTable


_S = TypeVar("_S", bound=_Settles)
_Handler = Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]


def errno_boundary(handler: _Handler[_S, _P, _R]) -> _Handler[_S, _P, _R]:
    """The one place where an OSError of a backing call becomes the errno the caller sees;
    and where, once a handler is done, the descriptors evicted while it ran are closed."""

    @functools.wraps(handler)
    async def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await handler(self, *args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        finally:
            self.nodes.settle()

    return wrapper


async def in_worker(call: Callable[[int], None], fd: int) -> None:
    """``call(fd)`` in a worker thread; EAGAIN if no thread can be started (the server's
    threads count against its container's pids limit, which the feature may have filled)."""
    try:
        await trio.to_thread.run_sync(call, fd)
    except RuntimeError as exc:
        raise OSError(errno.EAGAIN, f"no worker thread: {exc}") from None


def valid_name(name: bytes) -> bytes:
    """``name`` as one directory entry's name, or EINVAL."""
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise pyfuse3.FUSEError(errno.EINVAL)
    return name


def fill(attrs: pyfuse3.EntryAttributes, st: os.stat_result, *, writable: bool) -> None:
    """The attributes of a backing file as the view shows them: no set-id bits, and no
    write bits in a read-only mount."""
    attrs.st_mode = st.st_mode & (_SHOWN if writable else _SHOWN_READ_ONLY)
    attrs.st_nlink = st.st_nlink
    attrs.st_size = st.st_size
    attrs.st_blocks = st.st_blocks
    attrs.st_blksize = st.st_blksize
    attrs.st_atime_ns = st.st_atime_ns
    attrs.st_mtime_ns = st.st_mtime_ns
    attrs.st_ctime_ns = st.st_ctime_ns
