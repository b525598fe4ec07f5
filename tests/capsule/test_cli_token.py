"""`capsule token` end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def capsule(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capsule", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "signing.key"
    result = capsule("token", "keygen", str(path))
    assert result.returncode == 0, result.stderr
    assert "epoch 1" in result.stdout
    return path


def mint(key: Path, *caps: str, aud: str = "spellcheck", ttl: str = "60s") -> str:
    args = ["token", "mint", "--key", str(key), "--aud", aud, "--ttl", ttl]
    for cap in caps:
        args += ["--cap", cap]
    result = capsule(*args)
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    assert text.startswith("ctk1.")
    return text


def test_keygen_writes_a_private_file_and_refuses_to_overwrite(key: Path) -> None:
    assert os.stat(key).st_mode & 0o777 == 0o600
    again = capsule("token", "keygen", str(key))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_mint_inspect_verify(key: Path) -> None:
    token = mint(key, "icc:call:dictionary.lookup", "fs:read:/data/words/")
    inspected = capsule("token", "inspect", token)
    assert inspected.returncode == 0
    assert "UNVERIFIED" in inspected.stdout
    assert "icc:call:dictionary.lookup" in inspected.stdout
    as_json = json.loads(capsule("token", "inspect", "--json", token).stdout)
    assert as_json["aud"] == "spellcheck"
    assert as_json["verified"] is False
    assert as_json["capabilities"] == ["icc:call:dictionary.lookup", "fs:read:/data/words/"]

    ok = capsule("token", "verify", "--key", str(key), "--aud", "spellcheck", token)
    assert ok.returncode == 0, ok.stderr
    assert "VERIFIED" in ok.stdout
    via_stdin = capsule("token", "verify", "--key", str(key), "-", stdin=token + "\n")
    assert via_stdin.returncode == 0


@pytest.mark.parametrize(
    ("mutate", "extra", "reason"),
    [
        (lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1], [], "bad signature"),
        (lambda t: t, ["--aud", "editor"], "presented as 'editor'"),
        (lambda t: t, ["--at", str(time.time() + 3600)], "expired"),
        (lambda t: t, ["--at", str(time.time() - 3600)], "not valid before"),
        (lambda t: "garbage", [], "not a ctk1 token"),
    ],
)
def test_verify_refuses_with_exit_1_and_a_reason(
    key: Path, mutate: object, extra: list[str], reason: str
) -> None:
    token = mint(key, "icc:call:dictionary.lookup")
    result = capsule("token", "verify", "--key", str(key), *extra, mutate(token))  # type: ignore[operator]
    assert result.returncode == 1
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


def test_a_token_from_another_key_is_refused(key: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    assert capsule("token", "keygen", str(other)).returncode == 0
    token = mint(other, "icc:call:dictionary.lookup")
    result = capsule("token", "verify", "--key", str(key), token)
    assert result.returncode == 1
    assert "bad signature" in result.stderr


def test_rotation_refuses_older_tokens(key: Path) -> None:
    token = mint(key, "icc:call:dictionary.lookup")
    rotated = capsule("token", "rotate", str(key))
    assert rotated.returncode == 0
    assert "epoch 2" in rotated.stdout
    result = capsule("token", "verify", "--key", str(key), token)
    assert result.returncode == 1
    assert "epoch 1 is not the current epoch 2" in result.stderr


def test_attenuate_and_revoke_cascade(key: Path, tmp_path: Path) -> None:
    revocations = tmp_path / "revoked"
    parent = mint(key, "icc:call:dictionary.*", "fs:read:/data/")
    child = capsule(
        "token",
        "attenuate",
        "--key",
        str(key),
        "--cap",
        "icc:call:dictionary.lookup",
        "--aud",
        "editor",
        "--ttl",
        "10s",
        parent,
    )
    assert child.returncode == 0, child.stderr
    child_token = child.stdout.strip()
    claims = json.loads(capsule("token", "inspect", "--json", child_token).stdout)
    assert claims["capabilities"] == ["icc:call:dictionary.lookup"]
    assert claims["aud"] == "editor"
    assert claims["exp"] - claims["nbf"] <= 10.01
    assert len(claims["chain"]) == 1

    wider = capsule("token", "attenuate", "--key", str(key), "--cap", "fs:read:/", parent)
    assert wider.returncode == 1
    assert "lacks capability fs:read:/" in wider.stderr

    revoke = capsule("token", "revoke", "--revocations", str(revocations), parent)
    assert revoke.returncode == 0, revoke.stderr
    for token in (parent, child_token):
        result = capsule(
            "token", "verify", "--key", str(key), "--revocations", str(revocations), token
        )
        assert result.returncode == 1
        assert "revoked" in result.stderr


def test_a_key_readable_by_others_is_refused(key: Path) -> None:
    key.chmod(0o644)
    result = capsule("token", "mint", "--key", str(key), "--aud", "a", "--cap", "icc:call:b.c")
    assert result.returncode == 1
    assert "readable by others" in result.stderr
    assert "chmod 600" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cap", "icc:call:Bad"], "call target must be feature.service"),
        (["--cap", "icc:call:b.c", "--ttl", "forever"], "--ttl"),
        (["--cap", "icc:call:b.c", "--ttl", "0s"], "ttl must be more than 0"),
    ],
)
def test_bad_mint_input_is_one_clear_line(key: Path, args: list[str], fragment: str) -> None:
    result = capsule("token", "mint", "--key", str(key), "--aud", "a", *args)
    assert result.returncode == 1
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2() -> None:
    result = capsule("token", "mint", "--aud", "a")
    assert result.returncode == 2
    assert "--key" in result.stderr


def test_debug_shows_the_traceback(key: Path) -> None:
    key.chmod(0o644)
    result = capsule(
        "--debug", "token", "mint", "--key", str(key), "--aud", "a", "--cap", "icc:call:b.c"
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr
