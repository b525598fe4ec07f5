"""Starting one container of a feature: its uid, tokens, cgroup, file-system view and
instance, in that order, undoing what it made when a later step fails.

Must not decide what a failure means or change a feature's state: the supervisor does,
under its lock, with what this returns or raises.
"""

from __future__ import annotations

import os
from typing import final

import anyio

from capsule._broker._audit import AuditLog
from capsule._broker._broker import Broker
from capsule._sandbox import _isolation
from capsule._sandbox._cgroups import CgroupTree, ContainerCgroup
from capsule._spawn._client import ZygoteClient
from capsule._supervisor._handle import FeatureHandle
from capsule._supervisor._instance import Instance
from capsule._supervisor._plan import Planner, Version, container_uids
from capsule._supervisor._rundir import RunDir
from capsule._supervisor._views import VIEW_SERVER_PIDS, ViewServer, ViewTimeouts
from capsule._tasks import Services
from capsule._tokens._authority import Token, TokenAuthority
from capsule.errors import CapsuleError

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
        of a feature can run at once."""
        uid, gid = self._uid()
        cgroup = None
        view = None
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
            view = await self._open_view(handle, version, tokens, (uid, gid), cgroup)
            spec = self._plan.spec(
                version, self._isolation, uid, gid, cgroup, tokens=tokens, view=view
            )
            instance = await Instance.launch(
                spec,
                self._zygote,
                cgroup,
                broker=self._broker,
                task_group=self._tg,
                view=view,
                shadow=version.shadow,
            )
        except (CapsuleError, OSError):
            with anyio.CancelScope(shield=True):
                if view is not None:  # an instance stops its own view, twice is harmless
                    await view.stop()
                if cgroup is not None:  # an instance that was served removes its own
                    await anyio.to_thread.run_sync(cgroup.remove)
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
        ids: tuple[int, int],
        cgroup: ContainerCgroup | None,
    ) -> ViewServer:
        """Start the file-system server of a new container and wait until its view is
        mounted. The server joins the container's cgroup: what a feature makes its server
        do and hold (cpu, memory, processes) is charged to that feature."""
        view, roots = self._plan.view(version, tokens, *ids)
        return await ViewServer.launch(
            handle.name,
            view,
            self._rundir.views / f"{handle.name}-{handle.generation}",
            roots=roots,
            zygote=self._zygote,
            audit=self._audit,
            landlock=self._isolation.get("landlock").available,
            timeouts=self._view_timeouts,
            cgroup_procs=() if cgroup is None else cgroup.procs_files,
        )
