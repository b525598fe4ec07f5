"""The ``env`` key of a ``[policy.NAME]`` table: the variables an app sets for a feature.

Reads and checks the entries, and fills in ``from_host`` values from a host environment it
is handed; it must not read ``os.environ`` itself, and a feature's capsule.toml has no say.

::

    [policy.editor]
    env = { LOG_LEVEL = "debug", API_KEY = { from_host = "OPENAI_API_KEY" } }

A value is a string, set as written, or ``{ from_host = "HOST_NAME" }``: the value of the
host program's variable ``HOST_NAME`` when the supervisor opens (an error if it is unset).
A feature sees these and the runtime's minimal environment (``capsule._environ``), nothing
else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from capsule._environ import (
    MAX_ENTRY,
    MAX_TOTAL,
    NAME,
    check_name,
    container_environment,
    entry_size,
)
from capsule._manifest._locator import KeyPath, SourceMap, format_key
from capsule._manifest._model import EnvVar, FeatureGrant
from capsule._manifest._reader import Table, describe
from capsule._manifest._report import App
from capsule.errors import ConfigError

__all__ = ["ENV_EXAMPLE", "feature_environments", "grant_environment", "read_env"]

ENV_EXAMPLE: Final = 'env = { LOG_LEVEL = "debug", API_KEY = { from_host = "OPENAI_API_KEY" } }'


def _check_host_name(value: str) -> str | None:
    if NAME.fullmatch(value) is None:
        return (
            f'from_host "{value}" is not a valid environment variable name: use letters, digits '
            'and "_", not starting with a digit, e.g. "OPENAI_API_KEY"'
        )
    return None


def _entry(table: Table, key: KeyPath, name: str, item: object) -> EnvVar | None:
    """One ``NAME = value`` entry, or None (reported) when it is not valid."""
    doc = table.doc
    problem = check_name(name)
    if problem is not None:
        doc.error(key, problem)
        return None
    if isinstance(item, str):
        if "\0" in item:
            doc.error(key, "the value contains a NUL character, which no environment can hold")
            return None
        if entry_size(name, item) > MAX_ENTRY:
            doc.error(key, f"{name}=VALUE is more than {MAX_ENTRY} bytes, the most one can be")
            return None
        return EnvVar(name=name, value=item)
    if isinstance(item, dict):
        entry = Table(doc, key, item)
        entry.allow("from_host")
        host = entry.string(
            "from_host", required='from_host = "OPENAI_API_KEY"', check=_check_host_name
        )
        if host is None or len(item) != 1:
            return None
        return EnvVar(name=name, from_host=host)
    hint = (
        f' (write it as a string: {name} = "{str(item).lower()}")'
        if isinstance(item, bool | int | float)
        else ""
    )
    doc.error(
        key,
        f'expected a string or {{ from_host = "HOST_NAME" }}, found {describe(item)}{hint}',
    )
    return None


def read_env(policy: Table) -> tuple[EnvVar, ...]:
    """The valid entries of ``env`` in one ``[policy.NAME]`` table (the rest reported)."""
    if "env" not in policy:
        return ()
    key = (*policy.key, "env")
    value = policy.data["env"]
    if not isinstance(value, dict):
        policy.doc.error(
            key,
            f"env must be a table of NAME = value entries, found {describe(value)}; "
            f"e.g. {ENV_EXAMPLE}",
        )
        return ()
    found = [_entry(policy, (*key, name), name, item) for name, item in value.items()]
    return tuple(entry for entry in found if entry is not None)


def _refuse(app: App, key: KeyPath, message: str) -> ConfigError:
    path = app.root / "app.toml"
    try:
        line = SourceMap(path.read_text(encoding="utf-8")).line(key)
    except (OSError, UnicodeDecodeError):
        line = None  # the error still names the file and the key
    return ConfigError(message, path=os.fspath(path), key=format_key(key), line=line)


def _from_host(app: App, feature: str, var: EnvVar, host: Mapping[str, str], table: KeyPath) -> str:
    key: KeyPath = (*table, "env", var.name)
    value = host.get(var.from_host or "")
    if value is None:
        raise _refuse(
            app,
            key,
            f"{var.name} of feature {feature} is taken from the host variable {var.from_host}, "
            "which is not set in this program's environment: set it before opening the app, "
            "or give a value in app.toml",
        )
    if entry_size(var.name, value) > MAX_ENTRY:
        raise _refuse(
            app,
            key,
            f"{var.name} of feature {feature}: the host variable {var.from_host} holds more "
            f"than {MAX_ENTRY} bytes, the most one variable can be",
        )
    return value


def grant_environment(
    app: App,
    feature: str,
    grant: FeatureGrant | None,
    host: Mapping[str, str],
    *,
    table: KeyPath | None = None,
) -> tuple[tuple[str, str], ...]:
    """One feature's whole environment: the minimal one plus its grant's ``env``, with
    ``from_host`` values looked up in ``host``. ``table`` is where app.toml sets them
    (``[policy.NAME]``, or ``[plugins]`` for a plugin); ConfigError names it for an unset one."""
    where = ("policy", feature) if table is None else table
    values: dict[str, str] = {}
    for var in () if grant is None else grant.env:
        if var.from_host is None:
            values[var.name] = var.value or ""
        else:
            values[var.name] = _from_host(app, feature, var, host, where)
    environment = container_environment(values)
    if sum(entry_size(name, value) for name, value in environment) > MAX_TOTAL:
        raise _refuse(
            app,
            (*where, "env"),
            f"the environment of feature {feature} is more than {MAX_TOTAL} bytes: "
            "pass large data through a volume instead",
        )
    return environment


def feature_environments(
    app: App, host: Mapping[str, str]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each feature's whole environment (:func:`grant_environment` of each); features with
    the same environment share one tuple (most have only the minimal one)."""
    shared: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
    return {
        feature: shared.setdefault(environment, environment)
        for feature in app.features
        for environment in (grant_environment(app, feature, app.grants.get(feature), host),)
    }
