"""``open_supervisor``: load an app, open its supervisor, and close it whatever happens.

Owns the task group every background task of the app runs in; reads the app and its
version history and checks the options, then leaves everything else to ``Supervisor``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from capsule._container._feature import Feature
from capsule._manifest import App, load_app
from capsule._manifest._env import feature_environments
from capsule._supervisor._plan import default_state_dir
from capsule._supervisor._renewal import token_lifetime
from capsule._supervisor._supervisor import Supervisor
from capsule._supervisor._versions import open_history, running_app
from capsule._supervisor._views import ViewTimeouts
from capsule.errors import ConfigError

__all__ = ["open_supervisor"]


@asynccontextmanager
async def open_supervisor(
    app: str | os.PathLike[str] | App,
    *,
    inline: Mapping[str, Feature] | None = None,
    start_timeout: float = 10.0,
    stop_timeout: float = 5.0,
    call_timeout: float = 30.0,
    audit: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    view_timeouts: ViewTimeouts | None = None,
    token_ttl: float | None = None,
) -> AsyncIterator[Supervisor]:
    """Run every feature of ``app`` (an app directory, or a loaded App) until the block ends.

    Features start in dependency order, each in its own sandboxed container; a
    feature that fails is restarted per its policy and the app's strategy, and
    quarantined past its restart limit, while the rest keep running. ``inline``
    runs the given Feature objects (shipped with cloudpickle) instead of the
    bundles' entries, for tests and embedding. On exit every container is stopped
    and every mount, cgroup and temporary directory is removed.

    Every decision of the broker and of the file-system servers is written as JSON lines
    to ``audit`` (by default ``$XDG_STATE_HOME/capsule/audit/<app>/<run>.jsonl``;
    ``sup.audit_path`` says where). Features' private storage and their copy-on-write
    changes are kept beneath ``state_dir`` (a relative one is taken from the working
    directory; by default ``$XDG_STATE_HOME/capsule/state/<app>``), across restarts and
    updates, with the history of the versions each feature ran (``sup.versions(name)``):
    a feature whose update outlived its probation runs that version again, unless its
    bundle in the app changed version since (then the app's bundle runs); and so is the
    list of installed plugins (``plugins.json``), started again after the app's features.
    ``view_timeouts`` bounds how long a file-system server may take to mount a view and to
    answer its liveness probe (a server that does not answer is aborted, and its
    container ended and restarted per its policy). A feature's environment holds nothing of
    this program's but the variables its policy names (``env``); a ``from_host`` one that is
    not set here raises ConfigError.
    ``token_ttl`` is how many seconds each container's tokens live (by default the app's
    ``token_ttl``, else an hour); the supervisor renews them after two thirds of that, for
    as long as the container runs.
    """
    loaded = app if isinstance(app, App) else load_app(Path(app))
    state = _state_dir(loaded, state_dir)
    history = open_history(state)
    loaded = running_app(loaded, history, inline=set(inline or ()))
    ttl = token_lifetime(loaded, token_ttl)
    unknown = sorted(set(inline or ()) - set(loaded.features))
    if unknown:
        raise ConfigError(
            f"inline features not in app {loaded.manifest.name!r}: {', '.join(unknown)}"
        )
    environments = feature_environments(loaded, os.environ)  # from_host values, read once
    async with anyio.create_task_group() as tg:
        sup = Supervisor._create(
            loaded,
            tg,
            inline=inline or {},
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            call_timeout=call_timeout,
            audit=None if audit is None else Path(audit),
            state_dir=state,
            view_timeouts=view_timeouts or ViewTimeouts(),
            environments=environments,
            token_ttl=ttl,
            history=history,
        )
        try:
            await sup._open()
            yield sup
        finally:
            await sup._close()
            tg.cancel_scope.cancel()


def _state_dir(app: App, given: str | os.PathLike[str] | None) -> Path:
    """The app's state directory, absolute (views name their backing directories from it)."""
    if given is None:
        return default_state_dir(app.manifest.name)
    return Path(os.path.abspath(given))
