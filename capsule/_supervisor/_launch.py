"""Starting one container of a feature: its uid, tokens, cgroup, file-system view and
instance, in that order, undoing what it made when a later step fails.

Must not decide what a failure means or change a feature's state: the supervisor does,
under its lock, with what this returns or raises.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import final

import anyio

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._sandbox import _isolation
from capsule._sandbox._cgroups import CgroupTree, ContainerCgroup
from capsule._spawn._client import RootHandover, ZygoteClient
from capsule._supervisor._handle import FeatureHandle
from capsule._supervisor._instance import Instance
from capsule._supervisor._plan import Planner, Version, container_uids
from capsule._supervisor._rundir import RunDir
from capsule._supervisor._views import VIEW_SERVER_PIDS, ViewServer, ViewTimeouts
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule.errors import CapsuleError, SandboxError

__all__ = ["Launcher"]


@final
class Launcher:
    """Starts the containers of one app run, once its zygote, isolation and cgroups are up."""

    def __init__(
        self,
        plan: Planner,
        authority: TokenAuthority,
        broker: Broker,
        *,
        audit: AuditLog,
        rundir: RunDir,
        task_group: Services,
        zygote: ZygoteClient,
        isolation: _isolation.Isolation,
        cgroups: CgroupTree | None,
        view_timeouts: ViewTimeouts,
        token_ttl: float,
    ) -> None:
        self._plan = plan
        self._authority = authority
        self._broker = broker
        self._audit = audit
        self._rundir = rundir
        self._tg = task_group
        self._zygote = zygote
        self._isolation = isolation
        self._cgroups = cgroups
        self._view_timeouts = view_timeouts
        self._token_ttl = token_ttl
        self._slots = 0

    async def launch(self, handle: FeatureHandle, version: Version) -> tuple[Instance, list[Token]]:
        """Start one container of ``version`` of ``handle``'s feature and return it with the
        tokens it was given; on failure, remove its view and cgroup and raise CapsuleError
        or OSError. Its cgroup and view are named by the handle's generation: two versions
        of a feature can run at once. Its file-system server starts beside it: the
        container is forked and enters its namespaces while the view is being mounted, and
        builds its root from the view once it is."""
        uid, gid = self._uid()
        cgroup = None
        view = _ViewStart()
        prepared: RootHandover | None = None
        try:
            tokens = self._plan.tokens(self._authority, version.grant, self._token_ttl)
            if self._cgroups is not None:
                limits = version.manifest.limits
                cgroup = await anyio.to_thread.run_sync(
                    lambda: self._cgroups.create(  # type: ignore[union-attr]
                        f"{handle.name}-{handle.generation}",
                        memory=limits.memory,
                        pids=limits.pids + VIEW_SERVER_PIDS,  # its server joins it
                        cpu=limits.cpu,
                    )
                )
            mountpoint = self._rundir.views / f"{handle.name}-{handle.generation}"
            spec = self._plan.spec(
                version, self._isolation, uid, gid, cgroup, tokens=tokens, mountpoint=mountpoint
            )
            opening = functools.partial(
                self._open_view,
                handle,
                version,
                tokens,
                ids=(uid, gid),
                cgroup=cgroup,
                mountpoint=mountpoint,
            )
            prepared = self._zygote.prepare(spec.request)
            self._tg.start_soon(view.run, opening, prepared)
            instance = await Instance.launch(
                spec,
                self._zygote,
                cgroup,
                broker=self._broker,
                task_group=self._tg,
                prepared=prepared,
                view=view.wait,
                shadow=version.shadow,
            )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if prepared is not None:
                    prepared.close()  # (sent already, or never to be)
                server = await view.cancel()
                if server is not None:  # an instance stops its own view, twice is harmless
                    await server.stop()
                if cgroup is not None and isinstance(exc, CapsuleError | OSError):
                    # an instance that was served removes its own
                    await anyio.to_thread.run_sync(cgroup.remove)
            if view.error is not None and view.error is not exc:
                raise view.error from exc  # why the container could not start
            raise
        return instance, tokens

    def _uid(self) -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        self._slots += 1
        uids = container_uids(os.getpid())
        uid = uids[self._slots % len(uids)]
        return uid, uid

    async def _open_view(
        self,
        handle: FeatureHandle,
        version: Version,
        tokens: list[Token],
        *,
        ids: tuple[int, int],
        cgroup: ContainerCgroup | None,
        mountpoint: Path,
    ) -> ViewServer:
        """Start the file-system server of a new container and wait until its view is
        mounted on ``mountpoint``. The server joins the container's cgroup: what a feature
        makes its server do and hold (cpu, memory, processes) is charged to that feature."""
        view, roots = self._plan.view(version, tokens, *ids)
        return await ViewServer.launch(
            handle.name,
            view,
            mountpoint,
            roots=roots,
            zygote=self._zygote,
            audit=self._audit,
            landlock=self._isolation.get("landlock").available,
            timeouts=self._view_timeouts,
            cgroup_procs=() if cgroup is None else cgroup.procs_files,
        )


class _ViewStart:
    """A container's file-system server being started in a task of its own, beside the
    container: :meth:`wait` for it, :meth:`cancel` it when the launch fails."""

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._started = False
        self._server: ViewServer | None = None
        self.error: Exception | None = None

    async def run(self, start: Callable[[], Awaitable[ViewServer]], prepared: RootHandover) -> None:
        """Start the server; once its view is mounted, send the container ``prepared`` the
        sources of its root (they name the view's mount)."""
        if self._scope.cancel_called:  # the launch failed before this task ran
            return
        self._started = True
        try:
            with self._scope:
                self._server = await start()
                prepared.send()
        except Exception as exc:  # raised to the launch, from wait()
            self.error = exc
        finally:
            prepared.withdraw()  # unsent: the container, waiting for it, ends
            self._done.set()

    async def wait(self) -> ViewServer:
        """The server, once its view is mounted; raises what starting it raised."""
        await self._done.wait()
        if self.error is not None:
            raise self.error
        if self._server is None:
            raise SandboxError("the start of the file-system server was cancelled")
        return self._server

    async def cancel(self) -> ViewServer | None:
        """Stop starting the server (it cleans up after itself); the server if it had
        started already, to be stopped by the caller."""
        self._scope.cancel()
        if self._started:
            await self._done.wait()
        return self._server
