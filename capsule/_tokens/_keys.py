"""The signing key ring: Ed25519 keys with epochs, key files, rotation.

The only module that touches private keys; it must not decode or judge tokens.

A key file is a small TOML document, mode 0600::

    # capsule signing key: keep it secret
    format = "capsule-key-v1"
    epoch = 2
    private_key = "<base64url of the 32-byte Ed25519 seed>"

A new epoch replaces the key: tokens signed under an older epoch are refused.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tomllib
from pathlib import Path
from typing import Final, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from capsule.errors import ConfigError

__all__ = ["KEY_FORMAT", "KeyRing", "PublicKeyRing"]

KEY_FORMAT: Final = "capsule-key-v1"
MAX_EPOCH: Final = 2**32 - 1
_MAX_KEY_FILE: Final = 4096


@final
class PublicKeyRing:
    """The verifying half of a key ring: one public key and its epoch. Safe to share."""

    __slots__ = ("_key", "epoch")

    def __init__(self, epoch: int, public_key: Ed25519PublicKey) -> None:
        self.epoch = epoch
        self._key = public_key

    def check(self, epoch: int, signature: bytes, signed: bytes) -> bool:
        """True when ``signature`` is this epoch's key's signature over ``signed``."""
        if epoch != self.epoch:
            return False
        try:
            self._key.verify(signature, signed)
        except InvalidSignature:
            return False
        return True

    def public_bytes(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@final
class KeyRing:
    """The token authority's signing key and its epoch."""

    __slots__ = ("_private", "epoch", "public")

    def __init__(self, epoch: int, private_key: Ed25519PrivateKey) -> None:
        if not 1 <= epoch <= MAX_EPOCH:
            raise ConfigError(f"key epoch must be between 1 and {MAX_EPOCH}, found {epoch}")
        self.epoch = epoch
        self._private = private_key
        self.public = PublicKeyRing(epoch, private_key.public_key())

    @classmethod
    def generate(cls, *, epoch: int = 1) -> KeyRing:
        return cls(epoch, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes, *, epoch: int = 1) -> KeyRing:
        """A ring from a 32-byte seed (known-answer tests and key files)."""
        if len(seed) != 32:
            raise ConfigError(f"an Ed25519 seed is 32 bytes, found {len(seed)}")
        return cls(epoch, Ed25519PrivateKey.from_private_bytes(seed))

    def rotated(self) -> KeyRing:
        """A fresh key one epoch later: every token signed before it is refused."""
        return KeyRing.generate(epoch=self.epoch + 1)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    # -- key files ---------------------------------------------------------

    def _document(self) -> str:
        seed = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        encoded = base64.urlsafe_b64encode(seed).decode("ascii")
        return (
            "# capsule signing key: keep it secret (mode 0600)\n"
            f'format = "{KEY_FORMAT}"\n'
            f"epoch = {self.epoch}\n"
            f'private_key = "{encoded}"\n'
        )

    def save(self, path: str | os.PathLike[str], *, replace: bool = False) -> None:
        """Write the key file with mode 0600; refuse to overwrite unless ``replace``."""
        target = Path(path)
        data = self._document().encode("ascii")
        if not replace:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            return
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            temp.replace(target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read a key file; refuse one that others can read or that is malformed."""
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ConfigError("key file does not exist", path=name) from None
        except OSError as exc:
            raise ConfigError(f"cannot open key file: {exc.strerror}", path=name) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError("key file is not a regular file", path=name)
            if info.st_mode & 0o077:
                raise ConfigError(
                    f"key file is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"run: chmod 600 {name}",
                    path=name,
                )
            raw = handle.read(_MAX_KEY_FILE + 1)
        if len(raw) > _MAX_KEY_FILE:
            raise ConfigError("key file is too large to be a capsule key", path=name)
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"key file is not valid TOML: {exc}", path=name) from None
        if doc.get("format") != KEY_FORMAT:
            raise ConfigError(f'expected format = "{KEY_FORMAT}"', path=name, key="format")
        epoch = doc.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= MAX_EPOCH:
            raise ConfigError(
                f"epoch must be an integer from 1 to {MAX_EPOCH}, found {epoch!r}",
                path=name,
                key="epoch",
            )
        encoded = doc.get("private_key")
        if not isinstance(encoded, str):
            raise ConfigError("private_key must be a string", path=name, key="private_key")
        try:
            seed = base64.urlsafe_b64decode(encoded.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ConfigError(
                "private_key is not base64url", path=name, key="private_key"
            ) from None
        extra = sorted(set(doc) - {"format", "epoch", "private_key"})
        if extra:
            raise ConfigError(f"unknown key {extra[0]!r}", path=name, key=extra[0])
        try:
            return cls.from_seed(seed, epoch=epoch)
        except ConfigError as exc:
            raise ConfigError(exc.message, path=name, key="private_key") from None
