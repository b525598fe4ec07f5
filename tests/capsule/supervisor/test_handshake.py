"""The handshake check: a container's own sandbox report against what its policy requires.

Crafted reports, each weaker than required in one way, must each produce exactly one
problem; the report of a real running container must produce none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import capsule.testing
from capsule._ipc._messages import NAMESPACES, SandboxStatus
from capsule._supervisor._handshake import Expectation, check_status
from tests.capsule.supervisor.helpers import echo_app

HOST_UID = 2_000_000_123
EXPECTED = Expectation(host_uid=HOST_UID, seccomp=True, landlock_abi=3)


def _own(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def _good() -> SandboxStatus:
    """A report that meets EXPECTED: its own namespaces, one mapped uid, locked down."""
    namespaces = {kind: f"{kind}:[1]" for kind in NAMESPACES}
    assert all(namespaces[kind] != _own(kind) for kind in NAMESPACES)
    return SandboxStatus(
        namespaces=namespaces,
        uid_map=f"0 {HOST_UID} 1",
        uid=0,
        no_new_privs=True,
        dumpable=False,
        seccomp=2,
        landlock_abi=4,
        capabilities=0,
        fds=[0, 1, 2, 3],
        pid=1,
    )


def _with(**changes: Any) -> SandboxStatus:
    return msgspec.structs.replace(_good(), **changes)


def test_a_report_that_meets_the_policy_has_no_problems() -> None:
    assert check_status(_good(), EXPECTED) == []


@pytest.mark.parametrize("kind", NAMESPACES)
def test_a_shared_namespace_is_a_problem(kind: str) -> None:
    namespaces = {**_good().namespaces, kind: _own(kind)}
    problems = check_status(_with(namespaces=namespaces), EXPECTED)
    assert problems == [f"it shares the supervisor's {kind} namespace"]


@pytest.mark.parametrize("kind", NAMESPACES)
def test_a_namespace_missing_from_the_report_is_a_problem(kind: str) -> None:
    namespaces = {k: v for k, v in _good().namespaces.items() if k != kind}
    problems = check_status(_with(namespaces=namespaces), EXPECTED)
    assert problems == [f"it shares the supervisor's {kind} namespace"]


@pytest.mark.parametrize(
    ("changes", "expectation", "problem"),
    [
        pytest.param(
            {"uid_map": "0 0 1"}, EXPECTED, "its root is the host's root", id="root-is-host-root"
        ),
        pytest.param(
            {"uid_map": "0 100000 65536"},
            EXPECTED,
            "its uid map is '0 100000 65536', not one mapped uid",
            id="uid-range",
        ),
        pytest.param(
            {"uid_map": f"1000 {HOST_UID} 1"},
            EXPECTED,
            f"its uid map is '1000 {HOST_UID} 1', not one mapped uid",
            id="root-not-mapped",
        ),
        pytest.param(
            {"uid_map": ""}, EXPECTED, "its uid map is '', not one mapped uid", id="no-uid-map"
        ),
        pytest.param(
            {"uid_map": "0 1000 1"},
            EXPECTED,
            f"it runs as host uid 1000, not {HOST_UID}",
            id="other-host-uid",
        ),
        pytest.param({"no_new_privs": False}, EXPECTED, "no_new_privs is not set", id="no-nnp"),
        pytest.param({"dumpable": True}, EXPECTED, "it is dumpable", id="dumpable"),
        pytest.param(
            {"seccomp": 0},
            EXPECTED,
            "its seccomp mode is 0, not 2 (filter)",
            id="seccomp-off",
        ),
        pytest.param(
            {"seccomp": 1},
            EXPECTED,
            "its seccomp mode is 1, not 2 (filter)",
            id="seccomp-strict",
        ),
        pytest.param(
            {"landlock_abi": 0},
            EXPECTED,
            "its Landlock ABI is 0, not at least 3",
            id="landlock-off",
        ),
        pytest.param(
            {"landlock_abi": 2},
            EXPECTED,
            "its Landlock ABI is 2, not at least 3",
            id="landlock-too-old",
        ),
        pytest.param(
            {"capabilities": 1 << 21},
            EXPECTED,
            "it holds capabilities 0x200000",
            id="cap-sys-admin",
        ),
        pytest.param(
            {"capabilities": (1 << 41) - 1},
            EXPECTED,
            "it holds capabilities 0x1ffffffffff",
            id="all-capabilities",
        ),
        pytest.param(
            {"fds": [0, 1, 2, 3, 7]},
            EXPECTED,
            "it has unexpected open descriptors [7]",
            id="extra-fd",
        ),
        pytest.param(
            {"fds": [0, 1, 2, 3, 4, 255]},
            EXPECTED,
            "it has unexpected open descriptors [4, 255]",
            id="extra-fds",
        ),
        pytest.param(
            {"pid": 4242}, EXPECTED, "it is pid 4242, not pid 1 of its own namespace", id="pid"
        ),
    ],
)
def test_each_weakness_is_one_problem(
    changes: dict[str, Any], expectation: Expectation, problem: str
) -> None:
    assert check_status(_with(**changes), expectation) == [problem]


def test_seccomp_is_only_required_when_the_policy_expects_it() -> None:
    without = Expectation(host_uid=HOST_UID, seccomp=False, landlock_abi=0)
    assert check_status(_with(seccomp=0, landlock_abi=0), without) == []


def test_fewer_descriptors_than_the_standard_ones_are_fine() -> None:
    assert check_status(_with(fds=[3]), EXPECTED) == []


def test_every_weakness_at_once_is_reported() -> None:
    status = SandboxStatus(
        namespaces={kind: _own(kind) for kind in NAMESPACES},
        uid_map="0 0 4294967295",
        uid=0,
        no_new_privs=False,
        dumpable=True,
        seccomp=0,
        landlock_abi=0,
        capabilities=0x1FF,
        fds=[0, 1, 2, 3, 9],
        pid=77,
    )
    problems = check_status(status, EXPECTED)
    assert len(problems) == len(NAMESPACES) + 8, problems


@pytest.mark.trio
async def test_a_real_container_report_has_no_problems(tmp_path: Path) -> None:
    app = echo_app(tmp_path, ["a", "b"])
    with trio.fail_after(20):
        async with app.open() as sup:
            reports = {}
            for name in ("a", "b"):
                instance = sup.feature(name).instance
                assert instance is not None
                assert instance.hello is not None
                status = instance.hello.status
                expectation = instance.spec.expectation
                assert check_status(status, expectation) == []
                # and in detail, what the check relied on
                assert status.pid == 1
                assert status.fds == [0, 1, 2, 3]
                assert status.capabilities == 0
                assert status.no_new_privs
                assert not status.dumpable
                assert status.uid_map == f"0 {expectation.host_uid} 1"
                assert expectation.host_uid != 0
                if sup.statistics().isolation == "full":
                    assert expectation.seccomp
                    assert status.seccomp == 2
                    assert status.landlock_abi >= expectation.landlock_abi >= 1
                reports[name] = status
            # the two containers share no namespace with each other either, and as root
            # each runs as a host uid of its own
            for kind in NAMESPACES:
                assert reports["a"].namespaces[kind] != reports["b"].namespaces[kind]
            if os.geteuid() == 0:
                assert reports["a"].uid_map != reports["b"].uid_map
    assert capsule.testing.leftovers() == []
