"""Reading ``variants`` of a ``[policy.NAME]`` table: how a feature runs variants side by side.

Checks each key on its own, reporting errors at their file, line and key; must not look
at other features, at versions or at what is running.

::

    [policy.spellcheck]
    variants = { sticky = "payload.user_id", shadow = false, storage = "own" }
"""

from __future__ import annotations

from typing import Final

from capsule._manifest._model import DEFAULT_VARIANT_POLICY, VariantPolicy
from capsule._manifest._reader import Table

__all__ = ["VARIANT_KEYS", "read_variant_policy"]

VARIANT_KEYS: Final = ("sticky", "shadow", "storage")


def _sticky(value: str) -> str | None:
    if value == "caller":
        return None
    field = value.removeprefix("payload.")
    if field != value and field.isidentifier():
        return None
    return (
        f'"{value}" is not "caller" (the calling feature) nor "payload.FIELD" (a field of '
        'the call\'s map payload, such as "payload.user_id")'
    )


def read_variant_policy(policy: Table) -> VariantPolicy:
    """The ``variants`` entry of one ``[policy.NAME]`` table; the default when absent or broken."""
    table = policy.table("variants")
    if table is None:  # absent, or not a table (reported by Table.table)
        return DEFAULT_VARIANT_POLICY
    table.allow(*VARIANT_KEYS)
    sticky = table.string("sticky", check=_sticky)
    shadow = table.boolean("shadow")
    storage = table.choice("storage", ("own", "shared"))
    if shadow and storage == "shared":
        table.doc.error(
            (*table.key, "storage"),
            'a shadow variant cannot share the private storage (storage = "shared" with '
            'shadow = true): it would write where the control reads; use storage = "own"',
        )
    default = DEFAULT_VARIANT_POLICY
    return VariantPolicy(
        sticky=default.sticky if sticky is None else sticky,
        shadow=default.shadow if shadow is None else shadow,
        storage="shared" if storage == "shared" else default.storage,
    )
