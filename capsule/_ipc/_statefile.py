"""A feature's exported state as a memory file (memfd): created, written, sealed and read.

The state moves between containers by descriptor, not through the supervisor's memory. This
module never decodes what the file holds, and passes no descriptor itself (the channel does).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Final, final

__all__ = ["StateFile", "StateFileError", "read_state", "write_state"]

_NAME: Final = "capsule-state"
_MFD_NOEXEC_SEAL: Final = 0x0008
"""Linux 6.3+: the file is made without execute bits, and sealed so none can be added."""
_MODE: Final = 0o600
"""No execute bit for anyone: the exporting container writes any bytes it likes into the
file, and a file nobody may execute is not a way to run them (THREATS 2: what a feature
wrote must not run). Its owner is the supervisor's user, which no container maps, so a
container cannot change the mode back."""
_SEALS: Final = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
"""Once sealed, the file can be neither written, resized, nor unsealed, by anyone holding it."""


class StateFileError(Exception):
    """A state file could not be written, sealed or read; the message says why."""


@final
class _Passed:
    """A duplicate of a state file's descriptor, for the channel to pass and then close."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


@final
class StateFile:
    """The supervisor's descriptor of one memory file holding (or to hold) a feature's state.

    ``blank()`` makes one for a container to write its export into; ``seal`` then makes it
    immutable for every holder (the exporting container's own descriptor too) before its
    size is read, so what the next container reads is exactly what was there at the seal.
    """

    __slots__ = ("_fd", "size")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = 0

    @classmethod
    def blank(cls) -> StateFile:
        """An empty file, not sealed and never executable: a container writes its export
        into it."""
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        try:
            try:
                fd = os.memfd_create(_NAME, flags | _MFD_NOEXEC_SEAL)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                fd = os.memfd_create(_NAME, flags)  # before Linux 6.3: the mode alone
            try:
                os.fchmod(fd, _MODE)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise StateFileError(f"cannot create a memory file for the state: {exc}") from exc
        return cls(fd)

    @classmethod
    def holding(cls, data: bytes) -> StateFile:
        """A sealed file holding ``data`` (state kept in the supervisor's memory)."""
        state = cls.blank()
        try:
            write_state(state._fd, data)
            state.seal(len(data))
        except BaseException:
            state.close()
            raise
        return state

    def passed(self) -> _Passed:
        """A descriptor of the same file for the channel to pass (it closes it once sent)."""
        if self._fd < 0:
            raise StateFileError("the state file is closed")
        return _Passed(os.dup(self._fd))

    def seal(self, limit: int) -> None:
        """Make the file immutable, then take its size; StateFileError when it cannot be
        sealed (a writable mapping of it is held, or it was sealed by another) or holds
        more than ``limit`` bytes."""
        try:
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, _SEALS)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise StateFileError(
                    "the state file cannot be sealed: a writable mapping of it is still held"
                ) from None
            raise StateFileError(f"the state file cannot be sealed: {exc}") from exc
        self.size = os.fstat(self._fd).st_size
        if self.size > limit:
            raise StateFileError(
                f"exported {self.size} bytes of state, over the {limit}-byte limit "
                "(update.state_max of its policy in app.toml)"
            )

    def read(self) -> bytes:
        """What the (sealed) file holds."""
        return read_state(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> StateFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_state(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` at the start of the file ``fd`` (a container's export)."""
    with memoryview(data) as view, view.cast("B") as flat:
        done = 0
        while done < len(flat):
            written = os.pwrite(fd, flat[done:], done)
            if written <= 0:
                raise StateFileError(f"the state file took no more after {done} bytes")
            done += written


def read_state(fd: int) -> bytes:
    """All the file ``fd`` holds, in one buffer."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    if len(data) != size:  # a sealed file does not shrink: a short read is a fault
        raise StateFileError(f"read {len(data)} of the {size} bytes of the state file")
    return data
