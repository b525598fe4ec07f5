"""Throwaway apps for tests: real manifests on disk, features defined inline in the test.

Writes ordinary app.toml and capsule.toml files (checked by the same loader as any
app) and runs the inline Feature objects in real sandboxed containers.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from capsule._container._feature import Feature
from capsule._supervisor._open import open_supervisor
from capsule._supervisor._supervisor import Supervisor
from capsule.errors import FeatureError
from capsule.testing._faults import install_faults

__all__ = ["TestApp", "crash", "kill"]

_PLACEHOLDER: Final = '''"""Stands in for an inline feature: capsule.testing ships the real one."""

from capsule.feature import Feature

feature = Feature()
'''

#: keys of a feature's ``policy`` that go to app.toml only (the app alone decides them)
_APP_ONLY: Final = frozenset(
    {"env", "limits", "update", "variants", "start", "idle_stop", "wake_on"}
)

TomlValue = str | int | float | bool | list[Any] | dict[str, Any]


def _toml(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"


def _fs_items(value: TomlValue) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise TypeError(f'policy "fs" must be a list of tables, not {value!r}')
    return value


def _requested(mode: TomlValue) -> TomlValue:
    """The mode a feature asks for, given the mode its app approves (cow and private are rw)."""
    return "rw" if mode in ("cow", "private") else mode


def _table(name: str, values: Mapping[str, TomlValue]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass
class _Spec:
    feature: Feature
    version: str
    requires: tuple[str, ...]
    topics: tuple[str, ...]
    limits: Mapping[str, TomlValue]
    restart: Mapping[str, TomlValue]
    policy: Mapping[str, TomlValue]
    volumes: Mapping[str, str] = field(default_factory=dict)
    approve: Mapping[str, TomlValue] = field(default_factory=dict)
    forward_only: bool = False


class TestApp:
    """An app under a temporary directory whose features are defined in the test::

        app = TestApp(tmp_path)
        echo = app.feature("echo")

        @echo.service("echo")
        async def _(ctx, request):
            return request

        async with app.open() as sup:
            assert await sup.call("echo", "echo", 1) == 1

    Every feature also answers the ``fault`` service (see :mod:`capsule.testing`)
    unless created with ``faults=False``.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        root: Path,
        *,
        name: str = "testapp",
        strategy: str = "one_for_one",
        allow_missing: Iterable[str] = (),
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.strategy = strategy
        self.allow_missing = tuple(allow_missing)
        #: more keys of its ``[app]`` table, as written (``{"audit_max": "1MiB"}``)
        self.settings: dict[str, TomlValue] = {}
        #: its ``[plugins]`` table, as written (``{"call": ["echo.*"]}``); None: no table
        self.plugins: dict[str, TomlValue] | None = None
        self._specs: dict[str, _Spec] = {}
        self._versions: dict[Path, tuple[str, _Spec]] = {}  # bundle -> feature, its spec
        self._volumes: dict[str, str] = {}

    def volume(self, name: str, files: Mapping[str, str] | None = None) -> Path:
        """Create a volume directory (with ``files``: relative path -> text) and declare it."""
        path = self.root / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        for relative, text in (files or {}).items():
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        self._volumes[name] = f"volumes/{name}"
        return path

    def feature(
        self,
        name: str,
        *,
        version: str = "1.0.0",
        requires: Iterable[str] = (),
        topics: Iterable[str] = (),
        limits: Mapping[str, TomlValue] | None = None,
        restart: Mapping[str, TomlValue] | None = None,
        policy: Mapping[str, TomlValue] | None = None,
        approve: Mapping[str, TomlValue] | None = None,
        faults: bool = True,
    ) -> Feature:
        """Declare a feature and return its Feature object to register handlers on.

        ``limits`` and ``restart`` are the ``[limits]`` and ``[restart]`` tables of its
        capsule.toml; ``policy`` is both its ``[access]`` request and the app's
        approval (``{"fs": [{"path": "/data", "volume": "words"}]}``), except ``env``,
        which only the app's policy holds (``{"env": {"LOG_LEVEL": "debug"}}``), and
        ``limits``, its broker limits (``{"limits": {"subscriptions": 16}}``), and ``update``,
        how a new version takes over (``{"update": {"probation": "1s", "crashes": 1}}``), and
        ``variants``, how versions run side by side (``{"variants": {"sticky": "caller"}}``), and
        ``start``, ``idle_stop`` and ``wake_on``, when it runs (``{"start": "on-demand"}``).
        ``approve`` adds to the app's approval only (what a later version may ask for).
        """
        if name in self._specs:
            raise ValueError(f"feature {name!r} is declared twice")
        feature = Feature()
        if faults:
            install_faults(feature)
        self._specs[name] = _Spec(
            feature=feature,
            version=version,
            requires=tuple(requires),
            topics=tuple(topics),
            limits=dict(limits or {}),
            restart=dict(restart or {}),
            policy=dict(policy or {}),
            approve=dict(approve or {}),
        )
        return feature

    def version(
        self,
        name: str,
        version: str,
        *,
        access: Mapping[str, TomlValue] | None = None,
        limits: Mapping[str, TomlValue] | None = None,
        restart: Mapping[str, TomlValue] | None = None,
        forward_only: bool = False,
        faults: bool = True,
    ) -> Feature:
        """Declare another version of feature ``name`` (a bundle of its own, outside the app)
        and return its Feature object; :meth:`bundle` says where it is, to update to::

            v2 = app.version("counter", "2.0.0")

            @v2.service("get")
            async def _(ctx, request): ...

            async with app.open() as sup:
                await sup.update("counter", app.bundle(v2))

        ``access`` is what it asks for (its capsule.toml ``[access]``; by default what the
        first version asks for); the app's policy is the first version's.
        """
        first = self._specs.get(name)
        if first is None:
            raise ValueError(f"declare feature {name!r} before another version of it")
        feature = Feature()
        if faults:
            install_faults(feature)
        request = first.policy if access is None else access
        spec = _Spec(
            feature=feature,
            version=version,
            requires=first.requires,
            topics=first.topics,
            limits=dict(first.limits if limits is None else limits),
            restart=dict(first.restart if restart is None else restart),
            policy=dict(request),
            forward_only=forward_only,
        )
        bundle = self.root / "bundles" / f"{name}-{version}"
        if bundle in self._versions:
            raise ValueError(f"version {version} of {name!r} is declared twice")
        self._versions[bundle] = (name, spec)
        return feature

    def bundle(self, feature: Feature) -> Path:
        """The bundle directory of a version declared with :meth:`version` (written now)."""
        for bundle, (name, spec) in self._versions.items():
            if spec.feature is feature:
                self._write_bundle(name, spec, bundle)
                return bundle
        raise ValueError("not a version declared with TestApp.version()")

    @property
    def inline(self) -> dict[str, Feature]:
        return {name: spec.feature for name, spec in self._specs.items()}

    def write(self) -> Path:
        """Write app.toml and every bundle; returns the app directory."""
        if not self._specs:
            raise ValueError("a TestApp needs at least one feature")
        self.root.mkdir(parents=True, exist_ok=True)
        head: dict[str, TomlValue] = {
            "name": self.name,
            "features": [f"features/{name}" for name in self._specs],
            "strategy": self.strategy,
        }
        if self.allow_missing:
            head["allow_missing"] = list(self.allow_missing)
        head.update(self.settings)
        parts = [_table("app", head)]
        if self._volumes:
            parts.append(_table("volumes", self._volumes))
        for name, spec in self._specs.items():
            self._write_bundle(name, spec, self.root / "features" / name)
            approval = {**spec.policy, **spec.approve}
            if approval:
                parts.append(_table(f"policy.{name}", approval))
        if self.plugins is not None:
            parts.append(_table("plugins", self.plugins))
        (self.root / "app.toml").write_text("\n".join(parts), encoding="utf-8")
        for bundle, (name, spec) in self._versions.items():
            self._write_bundle(name, spec, bundle)
        return self.root

    def _write_bundle(self, name: str, spec: _Spec, bundle: Path) -> None:
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "inline.py").write_text(_PLACEHOLDER, encoding="utf-8")
        access: dict[str, TomlValue] = {
            key: [
                {"path": i["path"], "mode": _requested(i.get("mode", "ro"))}
                for i in _fs_items(value)
            ]
            if key == "fs"
            else value
            for key, value in spec.policy.items()
            if key not in _APP_ONLY  # the app alone sets these
        }
        head: dict[str, TomlValue] = {"name": name, "version": spec.version}
        head["entry"] = "inline:feature"
        if spec.forward_only:
            head["forward_only"] = True
        parts = [
            _table("feature", head),
            _table(
                "provides",
                {"services": sorted(spec.feature.services), "topics": list(spec.topics)},
            ),
        ]
        if spec.requires:
            parts.append(_table("requires", {"features": list(spec.requires)}))
        if access:
            parts.append(_table("access", access))
        if spec.limits:
            parts.append(_table("limits", spec.limits))
        if spec.restart:
            parts.append(_table("restart", spec.restart))
        (bundle / "capsule.toml").write_text("\n".join(parts), encoding="utf-8")

    @asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Supervisor]:
        """Write the app and run it: ``open_supervisor`` with the inline features.

        The audit log goes to ``audit.jsonl`` beside the app unless ``audit`` is given, and
        private and copy-on-write storage to ``state/`` beside it unless ``state_dir`` is.
        """
        options.setdefault("audit", self.root / "audit.jsonl")
        options.setdefault("state_dir", self.root / "state")
        async with open_supervisor(self.write(), inline=self.inline, **options) as sup:
            for bundle, (_, spec) in self._versions.items():  # the code each version runs
                sup._plan.inline[bundle] = spec.feature
            yield sup


def kill(sup: Supervisor, feature: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to a feature's running container from outside; returns its pid."""
    instance = sup.feature(feature).instance
    if instance is None or instance.ended.is_set():
        raise FeatureError(feature, "has no running container to signal")
    instance.send_signal(sig)
    return instance.pid


async def crash(sup: Supervisor, feature: str, sig: int = signal.SIGKILL) -> int:
    """Like :func:`kill`, then wait until that container has ended; returns its pid."""
    instance = sup.feature(feature).instance
    pid = kill(sup, feature, sig)
    assert instance is not None  # noqa: S101 - kill() checked it
    await instance.ended.wait()
    return pid
