"""A blocking client of a running app's control socket, for the command line.

Must not hold logic of its own: it frames requests with the run's admin secret, reads
one response each, and raises the app's failures as ControlError.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Final, Literal, TypeVar, final

from capsule._control._errors import ControlError, ControlRefusedError
from capsule._control._protocol import (
    HEADER,
    MAX_REQUEST,
    MAX_RESPONSE,
    Call,
    Done,
    Failure,
    History,
    PluginAdd,
    PluginList,
    PluginRemove,
    PluginReview,
    PluginRow,
    Plugins,
    Request,
    Response,
    Restart,
    Result,
    Rollback,
    Snapshot,
    Start,
    Status,
    Stop,
    Update,
    Updated,
    Variants,
    VariantsReport,
    Versions,
    decode_response,
    encode,
    frame_size,
)
from capsule._control._runs import RunningApp, read_secret
from capsule.errors import ProtocolError

__all__ = ["ControlClient"]

_TIMEOUT: Final = 10.0
"""Seconds to wait for a status answer (or to connect)."""
_LIFECYCLE: Final = 300.0
"""Seconds to wait for a start, stop or restart: the app's own timeouts end it sooner."""
_SLACK: Final = 10.0
"""Seconds past a call's own deadline before the client gives up on the answer."""

_R = TypeVar(
    "_R", Snapshot, Result, Done, Updated, Versions, PluginReview, PluginList, VariantsReport
)


@final
class ControlClient:
    """One connection to the control socket of ``app``: ``with ControlClient(app) as c:``.

    ``secret`` overrides the admin secret read from the run's 0600 file (tests use it).
    """

    def __init__(self, app: RunningApp, *, secret: str | None = None) -> None:
        self.app = app
        self._secret = read_secret(app) if secret is None else secret
        self._sock: socket.socket | None = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_TIMEOUT)
            try:
                sock.connect(str(self.app.socket))
            except OSError as exc:
                sock.close()
                raise ControlError(
                    f"{self.app.describe()} does not answer on {self.app.socket}: "
                    f"{exc.strerror or exc}"
                ) from None
            self._sock = sock
        return self._sock

    def _receive(self, sock: socket.socket, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(min(size - len(data), 1 << 16))
            if not chunk:
                self.close()
                raise ControlError(f"{self.app.describe()} closed the control connection")
            data += chunk
        return bytes(data)

    def request(self, message: Request, *, timeout: float = _TIMEOUT) -> Response:
        """Send ``message`` and return the response; a Failure raises ControlError."""
        sock = self._connect()
        try:
            sock.settimeout(timeout)
            sock.sendall(encode(message, limit=MAX_REQUEST))
            size = frame_size(self._receive(sock, HEADER), limit=MAX_RESPONSE)
            response = decode_response(self._receive(sock, size))
        except (TimeoutError, ProtocolError, OSError) as exc:
            self.close()
            if isinstance(exc, ControlError):
                raise
            what = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise ControlError(f"{self.app.describe()}: {what}") from None
        if isinstance(response, Failure):
            if response.kind == "refused":
                self.close()
                raise ControlRefusedError(
                    f"{self.app.describe()} refused the request: {response.message}",
                    kind=response.kind,
                )
            raise ControlError(response.message, kind=response.kind)
        return response

    def _expect(self, response: Response, kind: type[_R]) -> _R:
        if isinstance(response, kind):
            return response
        self.close()
        raise ControlError(
            f"{self.app.describe()} answered {type(response).__name__}, not {kind.__name__}"
        )

    def status(self) -> Snapshot:
        return self._expect(self.request(Status(token=self._secret)), Snapshot)

    def call(self, feature: str, service: str, payload: str, *, timeout: float) -> str:
        """Call ``feature.service`` with ``payload`` (JSON text); returns the reply as JSON text."""
        message = Call(
            token=self._secret, feature=feature, service=service, payload=payload, timeout=timeout
        )
        return self._expect(self.request(message, timeout=timeout + _SLACK), Result).json

    def lifecycle(self, action: str, feature: str) -> Done:
        """``start``, ``stop`` or ``restart`` a feature; returns its state afterwards."""
        kinds: dict[str, type[Start | Stop | Restart]] = {
            "start": Start,
            "stop": Stop,
            "restart": Restart,
        }
        message = kinds[action](token=self._secret, feature=feature)
        return self._expect(self.request(message, timeout=_LIFECYCLE), Done)

    def update(self, feature: str, bundle: str, *, approve: bool, dry_run: bool) -> Updated:
        """Update ``feature`` live to the bundle at ``bundle`` (an absolute path)."""
        message = Update(
            token=self._secret, feature=feature, bundle=bundle, approve=approve, dry_run=dry_run
        )
        return self._expect(self.request(message, timeout=_LIFECYCLE), Updated)

    def rollback(self, feature: str) -> Updated:
        """Go back to the version ``feature`` ran before its last update."""
        message = Rollback(token=self._secret, feature=feature)
        return self._expect(self.request(message, timeout=_LIFECYCLE), Updated)

    def variants(
        self,
        action: Literal["set", "status", "promote", "abort"],
        feature: str,
        *,
        shares: dict[str, float] | None = None,
        sticky: str | None = None,
        shadow: bool | None = None,
        approve: bool = False,
        version: str | None = None,
    ) -> VariantsReport:
        """Set, show, promote or abort the variants of ``feature`` (bundles: absolute paths)."""
        message = Variants(
            token=self._secret,
            action=action,
            feature=feature,
            shares=shares or {},
            sticky=sticky,
            shadow=shadow,
            approve=approve,
            version=version,
        )
        return self._expect(self.request(message, timeout=_LIFECYCLE), VariantsReport)

    def history(self, feature: str) -> Versions:
        """The versions ``feature`` ran, oldest first."""
        return self._expect(self.request(History(token=self._secret, feature=feature)), Versions)

    def plugin_add(self, bundle: str, *, approve: bool) -> Done:
        """Install the bundle at ``bundle`` (an absolute path) as a plugin."""
        message = PluginAdd(token=self._secret, bundle=bundle, approve=approve)
        return self._expect(self.request(message, timeout=_LIFECYCLE), Done)

    def plugin_review(self, bundle: str) -> PluginReview:
        """What installing the bundle at ``bundle`` would grant, without installing it."""
        message = PluginAdd(token=self._secret, bundle=bundle, dry_run=True)
        return self._expect(self.request(message, timeout=_LIFECYCLE), PluginReview)

    def plugin_remove(self, feature: str, *, drain: float, purge: bool) -> Done:
        """Uninstall the plugin ``feature``."""
        message = PluginRemove(token=self._secret, feature=feature, drain=drain, purge=purge)
        return self._expect(self.request(message, timeout=_LIFECYCLE + drain), Done)

    def plugins(self) -> list[PluginRow]:
        """The installed plugins."""
        return self._expect(self.request(Plugins(token=self._secret)), PluginList).plugins
