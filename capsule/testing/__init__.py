"""capsule.testing: run real sandboxed apps from tests, with inline features and faults.

::

    from capsule.testing import TestApp

    async def test_echo(tmp_path):
        app = TestApp(tmp_path)
        echo = app.feature("echo")

        @echo.service("echo")
        async def _(ctx, request):
            return request

        async with app.open() as sup:
            assert await sup.call("echo", "echo", {"x": 1}) == {"x": 1}

Every inline feature also answers ``fault`` (``{"kind": "segfault"}`` and the
other kinds in ``FAULTS``), :func:`kill` signals a container from outside and
:func:`crash` also waits until it has ended.
:func:`leftovers` lists anything a supervisor left behind. The ``capsule_app``
pytest fixture gives a fresh :class:`TestApp` under ``tmp_path``.

Live updates: :meth:`TestApp.version` declares another version of an inline feature,
:meth:`TestApp.bundle` says where its bundle is, and :func:`check_live_update` updates to
it under a stream of calls, checking that none fails and that the state went across.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from capsule._facade import load_names, publish
from capsule.testing._faults import FAULTS as FAULTS
from capsule.testing._faults import install_faults as install_faults

if TYPE_CHECKING:
    from capsule.testing._app import TestApp as TestApp
    from capsule.testing._app import crash as crash
    from capsule.testing._app import kill as kill
    from capsule.testing._leftovers import leftovers as leftovers
    from capsule.testing._updates import check_live_update as check_live_update

__all__ = [
    "FAULTS",
    "TestApp",
    "check_live_update",
    "crash",
    "install_faults",
    "kill",
    "leftovers",
]

#: the names imported on first use, by defining module: they need the supervisor, which a
#: container must not import when it unpickles the fault services of an inline feature
#: (``capsule.testing._faults``, imported with this package)
_LAZY: Final = {
    "capsule.testing._app": ("TestApp", "crash", "kill"),
    "capsule.testing._leftovers": ("leftovers",),
    "capsule.testing._updates": ("check_live_update",),
}


if not TYPE_CHECKING:  # mypy sees the imports above, and flags a name that is not one

    def __getattr__(name: str) -> object:
        if not any(name in names for names in _LAZY.values()):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        load_names(__name__, globals(), _LAZY)
        return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


publish(__name__, globals(), ["install_faults"])
