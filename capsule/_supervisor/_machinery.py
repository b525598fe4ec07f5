"""The host side of one app run: the isolation it has, its run directory, its cgroup tree,
its zygote, and the launcher that forks containers from it.

Brought up once by the supervisor before any container starts and taken down after the
last one stopped; knows nothing of features, restarts or updates.
"""

from __future__ import annotations

from typing import final

import anyio
import structlog

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._sandbox import _isolation
from capsule._sandbox._cgroups import CgroupTree
from capsule._spawn._client import ZygoteClient
from capsule._supervisor._handle import FeatureHandle
from capsule._supervisor._instance import Instance
from capsule._supervisor._launch import Launcher
from capsule._supervisor._plan import Planner, Version
from capsule._supervisor._rundir import RunDir
from capsule._supervisor._views import ViewTimeouts
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority

__all__ = ["Machinery"]

_log = structlog.get_logger("capsule.supervisor")


@final
class Machinery:
    """What one app run needs of the host to start containers, and its clean-up."""

    def __init__(
        self,
        rundir: RunDir,
        plan: Planner,
        *,
        authority: TokenAuthority,
        broker: Broker,
        audit: AuditLog,
        services: Services,
        view_timeouts: ViewTimeouts,
        token_ttl: float,
    ) -> None:
        self.rundir = rundir
        self._plan = plan
        self._authority = authority
        self._broker = broker
        self._audit = audit
        self._tg = services
        self._view_timeouts = view_timeouts
        self._token_ttl = token_ttl
        self.isolation: _isolation.Isolation | None = None
        self.cgroups: CgroupTree | None = None
        self.zygote: ZygoteClient | None = None  # once open
        self._launcher: Launcher | None = None  # once the zygote is up

    async def open(self, app: str, allow_missing: tuple[str, ...]) -> _isolation.Isolation:
        """Probe the isolation (refusing what the app does not allow to be missing), clean
        up what a crashed run left, make the cgroup tree and start the zygote."""
        isolation = _isolation.probe()
        self.isolation = isolation
        _isolation.require(isolation, allow_missing, app=app)
        removed = self.rundir.open()
        if removed:
            _log.warning("removed stale run directories", paths=[str(p) for p in removed])
        if isolation.get("cgroups").available:
            from capsule._sandbox._cgroup_stale import cleanup_stale  # noqa: PLC0415 - rarely needed

            stale = await anyio.to_thread.run_sync(cleanup_stale, isolation.cgroups)
            if stale:
                _log.warning("removed stale cgroups", paths=stale)
            tree = CgroupTree(isolation.cgroups, self.rundir.name)
            await anyio.to_thread.run_sync(tree.open)
            self.cgroups = tree
        self._plan.dirs.open()  # each granted directory, before any feature can move it
        self.zygote = ZygoteClient.launch(self.rundir.stage, self.rundir.build_data)
        await self.zygote.wait_started()
        self._tg.start_soon(self.zygote.serve)
        self._launcher = Launcher(
            self._plan,
            self._authority,
            self._broker,
            audit=self._audit,
            rundir=self.rundir,
            task_group=self._tg,
            zygote=self.zygote,
            isolation=isolation,
            cgroups=self.cgroups,
            view_timeouts=self._view_timeouts,
            token_ttl=self._token_ttl,
        )
        return isolation

    async def launch(self, handle: FeatureHandle, version: Version) -> tuple[Instance, list[Token]]:
        """Start a container of ``version`` for ``handle`` and wait until it is ready."""
        if self._launcher is None:
            raise RuntimeError("the app's machinery is not open")
        return await self._launcher.launch(handle, version)

    async def aclose(self) -> None:
        """End the zygote, remove the cgroup tree, the run directory and the held
        directories (every container has stopped)."""
        if self.zygote is not None:
            await self.zygote.aclose()
        if self.cgroups is not None:
            await anyio.to_thread.run_sync(self.cgroups.close)
        self.rundir.close()
        self._plan.dirs.close()
