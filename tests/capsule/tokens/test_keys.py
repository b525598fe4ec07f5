"""Key files: created 0600, refused when others can read them or when malformed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsule.errors import ConfigError
from capsule.tokens import KeyRing, TokenAuthority


def test_a_saved_key_loads_and_signs_the_same(tmp_path: Path) -> None:
    ring = KeyRing.generate(epoch=4)
    path = tmp_path / "signing.key"
    ring.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = KeyRing.load(path)
    assert loaded.epoch == 4
    assert loaded.public.public_bytes() == ring.public.public_bytes()
    token = TokenAuthority(ring).mint("a", ["icc:call:b.c"])
    assert TokenAuthority(loaded).verify(token).aud == "a"


def test_save_never_overwrites_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k"
    KeyRing.generate().save(path)
    with pytest.raises(FileExistsError):
        KeyRing.generate().save(path)
    second = KeyRing.generate(epoch=2)
    second.save(path, replace=True)
    assert KeyRing.load(path).epoch == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    KeyRing.generate().save(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"readable by others \\(mode {mode:04o}\\).*chmod 600"):
        KeyRing.load(path)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    KeyRing.generate().save(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="cannot open key file"):
        KeyRing.load(tmp_path / "link")


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ('format = "other"\nepoch = 1\nprivate_key = "AA"\n', "format"),
        ('format = "capsule-key-v1"\nepoch = "1"\nprivate_key = "AA"\n', "epoch"),
        ('format = "capsule-key-v1"\nepoch = 1\nprivate_key = 5\n', "private_key"),
        ('format = "capsule-key-v1"\nepoch = 1\nprivate_key = "AAAA"\n', "private_key"),
        ('format = "capsule-key-v1"\nepoch = 0\nprivate_key = "' + "A" * 43 + '="\n', "epoch"),
        ('format = "capsule-key-v1"\nepoch = 1\nprivate_key = "' + "A" * 43 + '="\nx = 1\n', "x"),
        ("not toml [", None),
    ],
)
def test_malformed_key_files_name_the_key(tmp_path: Path, content: str, key: str | None) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        KeyRing.load(path)
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        KeyRing.load(tmp_path / "nope")
