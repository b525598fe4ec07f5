"""The control socket of a running app, served by ``capsule run`` beside its supervisor.

Answers the closed set of requests of ``_protocol`` once the peer's uid and the run's
admin secret (compared with ``hmac.compare_digest``) check out; must not hold
supervisor logic (it calls the Supervisor's public API) and never decodes anything but
the protocol's structs.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, final

import anyio
import anyio.abc
import msgspec
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream

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
    decode_request,
    encode,
    frame_size,
)
from capsule._control._runs import (
    INFO_NAME,
    SECRET_NAME,
    SOCKET_NAME,
    new_secret,
    write_private,
)
from capsule._supervisor._rundir import RunDir
from capsule._supervisor._supervisor import Supervisor
from capsule.errors import CapsuleError, ProtocolError, UpdateError

#: the name audit lines give the control socket itself (never a feature's name)
CONTROL: Final = "@control"

__all__ = ["ControlServer", "open_control_server", "snapshot"]

_log = structlog.get_logger("capsule.control")

_IDLE: Final = 600.0
"""Seconds a connection may wait between two requests (once it has shown the secret)."""
_TRANSFER: Final = 10.0
"""Seconds a new connection may take to send its first request, the rest of a request may
take once its header has arrived, and a response may take to go."""
_CONNECTIONS: Final = 16
"""Connections served at once; more wait in the listen backlog."""
_BACKOFF: Final = 0.1
"""Seconds before accepting again after accept() failed."""
_PEERCRED: Final = struct.Struct("3i")


def snapshot(sup: Supervisor, *, run: str, started: float) -> Snapshot:
    """The app's statistics as the protocol carries them (also what ``capsule run`` shows)."""
    stats = sup.statistics()
    return Snapshot(
        app=stats.app,
        run=run,
        pid=os.getpid(),
        started=started,
        uptime=max(0.0, time.time() - started),
        clock=anyio.current_time(),
        isolation=stats.isolation,
        cgroups=stats.cgroups,
        audit_path=stats.audit_path,
        containers_started=stats.containers_started,
        restarts=stats.restarts,
        quarantined=list(stats.quarantined),
        calls_routed=stats.calls_routed,
        events_published=stats.events_published,
        allowed=stats.allowed,
        denied=stats.denied,
        features=list(stats.features.values()),
        variants=list(stats.variants.values()),
    )


def _peer(stream: anyio.abc.SocketStream) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610 - anyio, not Django
    pid, uid, _ = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid


def _reply_json(reply: Any) -> str:
    """A call's reply as JSON text (bytes as base64; anything else JSON lacks as its repr)."""
    try:
        return msgspec.json.encode(reply, enc_hook=repr).decode()
    except (TypeError, ValueError):
        return json.dumps(reply, default=repr)


@final
class ControlServer:
    """The control socket of one app run. Created by :func:`open_control_server`."""

    def __init__(self, sup: Supervisor, directory: Path, secret: str, run: str) -> None:
        self.sup = sup
        self.directory = directory
        self.run = run
        self.started = time.time()
        self._secret = secret.encode("ascii")
        self._slots = anyio.Semaphore(_CONNECTIONS)
        self.served = 0
        self.refused = 0

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME

    @property
    def secret_path(self) -> Path:
        return self.directory / SECRET_NAME

    def snapshot(self) -> Snapshot:
        return snapshot(self.sup, run=self.run, started=self.started)

    async def _accept(self, listener: anyio.abc.SocketListener) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await self._slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of descriptors, say: the app itself goes on
                    self._slots.release()
                    _log.warning("control socket cannot accept", error=str(exc))
                    await anyio.sleep(_BACKOFF)
                    continue
                except BaseException:
                    self._slots.release()
                    raise
                tg.start_soon(self._connection, stream)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                pid, uid = _peer(stream)
                if uid not in {os.geteuid(), 0}:
                    self.refused += 1
                    _log.warning("control connection refused", reason="other user", uid=uid)
                    return
                await self._requests(stream, pid)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        except Exception:  # a bug here must not end the app: log it, drop the connection
            _log.exception("control connection failed")
        finally:
            self._slots.release()

    async def _requests(self, stream: anyio.abc.SocketStream, pid: int) -> None:
        """Answer requests one at a time until the client closes, stalls or errs."""
        reader = BufferedByteReceiveStream(stream)
        idle = _TRANSFER  # until a request has shown the secret, then _IDLE
        while True:
            header = b""
            with anyio.move_on_after(idle):
                header = await reader.receive_exactly(HEADER)
            if not header:
                return  # idle for too long
            with anyio.fail_after(_TRANSFER):
                try:
                    request = decode_request(
                        await reader.receive_exactly(frame_size(header, limit=MAX_REQUEST))
                    )
                except ProtocolError as exc:
                    failure = Failure("ProtocolError", str(exc))
                    await stream.send(encode(failure, limit=MAX_RESPONSE))
                    return
            if not hmac.compare_digest(request.token.encode("utf-8"), self._secret):
                self.refused += 1
                _log.warning("control request refused", reason="wrong admin secret", peer=pid)
                self.sup.audit(
                    "control",
                    feature=CONTROL,
                    decision="refuse",
                    reason="wrong admin secret",
                    request=type(request).__name__.lower(),
                    peer=pid,
                )
                with anyio.fail_after(_TRANSFER):
                    await stream.send(
                        encode(Failure("refused", "wrong admin secret"), limit=MAX_RESPONSE)
                    )
                return
            idle = _IDLE
            response = await self._answer(request, pid)
            self.served += 1
            try:
                data = encode(response, limit=MAX_RESPONSE)
            except ProtocolError as exc:
                data = encode(Failure("ProtocolError", str(exc)), limit=MAX_RESPONSE)
            with anyio.fail_after(_TRANSFER):
                await stream.send(data)

    async def _answer(self, request: Request, pid: int) -> Response:
        if isinstance(request, Status):
            return self.snapshot()
        if isinstance(request, Plugins):
            return PluginList(list(self.sup.plugins()))
        feature = getattr(request, "feature", CONTROL)
        _log.info(
            "control request",
            request=type(request).__name__.lower(),
            feature=feature,
            service=getattr(request, "service", None),
            peer=pid,
        )
        if isinstance(request, PluginAdd):
            response = await self._plugin_add(request)
        else:
            response = await self._act(request)
        outcome = response.kind if isinstance(response, Failure) else "done"
        if isinstance(response, Done | PluginReview):
            feature = response.feature
        self.sup.audit(
            "control",
            feature=feature,
            decision="operate",
            reason=f"{type(request).__name__.lower()} through the control socket: {outcome}",
            request=type(request).__name__.lower(),
            service=getattr(request, "service", None),
            bundle=getattr(request, "bundle", None),
            peer=pid,
        )
        return response

    async def _plugin_add(self, request: PluginAdd) -> Response:
        try:
            if request.dry_run:
                candidate = await self.sup.review_plugin(request.bundle)
                return PluginReview(
                    candidate.manifest.name,
                    candidate.manifest.version,
                    candidate.diff.render(),
                    candidate.diff.widens,
                )
            handle = await self.sup.install(request.bundle, approve=request.approve)
        except CapsuleError as exc:
            return Failure(type(exc).__name__, str(exc))
        return Done(handle.name, handle.state.value)

    async def _act(
        self,
        request: Call
        | Start
        | Stop
        | Restart
        | Update
        | Rollback
        | History
        | PluginRemove
        | Variants,
    ) -> Response:
        sup = self.sup
        try:
            if isinstance(request, Update):
                report = await sup.update(
                    request.feature,
                    request.bundle,
                    approve=request.approve,
                    dry_run=request.dry_run,
                )
                return Updated(report)
            if isinstance(request, Rollback):
                return Updated(await sup.rollback(request.feature))
            if isinstance(request, Variants):
                return await self._variants(request)
            if isinstance(request, History):
                return Versions(request.feature, list(sup.versions(request.feature)))
            if isinstance(request, PluginRemove):
                await sup.uninstall(request.feature, drain=request.drain, purge=request.purge)
                return Done(request.feature, "removed")
            if isinstance(request, Call):
                try:
                    payload = msgspec.json.decode(request.payload)
                except (msgspec.DecodeError, RecursionError) as exc:
                    return Failure("ProtocolError", f"the payload is not JSON: {exc}")
                reply = await sup.call(
                    request.feature, request.service, payload, timeout=request.timeout
                )
                return Result(_reply_json(reply))
            if isinstance(request, Start):
                await sup.start(request.feature)
            elif isinstance(request, Stop):
                await sup.stop(request.feature)
            elif isinstance(request, Restart):
                await sup.restart(request.feature)
        except CapsuleError as exc:
            return Failure(type(exc).__name__, str(exc))
        return Done(request.feature, sup.feature(request.feature).state.value)

    async def _variants(self, request: Variants) -> VariantsReport:
        sup, name = self.sup, request.feature
        if request.action == "set":
            status = await sup.set_variants(
                name,
                request.shares,
                sticky=request.sticky,
                shadow=request.shadow,
                approve=request.approve,
            )
            return VariantsReport(status)
        if request.action == "promote":
            if request.version is None:
                raise UpdateError(name, "promote needs the version to keep")
            report = await sup.promote_variant(name, request.version)
            return VariantsReport(sup.variants(name), report)
        if request.action == "abort":
            return VariantsReport(await sup.abort_variants(name))
        return VariantsReport(sup.variants(name))


@asynccontextmanager
async def open_control_server(
    sup: Supervisor, *, directory: Path | None = None
) -> AsyncIterator[ControlServer]:
    """Serve the control socket of ``sup`` until the block ends, then remove its files.

    ``directory`` defaults to the supervisor's run directory (0700, removed with the run).
    """
    if directory is None:
        rundir = RunDir()
        directory, run = rundir.path, rundir.name
    else:
        run = directory.name
    if not directory.is_dir():
        raise FileNotFoundError(f"no run directory {directory}: is the supervisor open?")
    secret = new_secret()
    server = ControlServer(sup, directory, secret, run)
    paths = [directory / INFO_NAME, server.socket_path, server.secret_path]
    try:
        write_private(server.secret_path, secret + "\n")
        listener = await anyio.create_unix_listener(server.socket_path, mode=0o600)
        try:
            info = {"app": sup.app.manifest.name, "pid": os.getpid(), "started": server.started}
            write_private(directory / INFO_NAME, json.dumps(info) + "\n")
            async with anyio.create_task_group() as tg:
                tg.start_soon(server._accept, listener)
                try:
                    yield server
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
    finally:
        for path in paths:
            with suppress(FileNotFoundError):
                path.unlink()
