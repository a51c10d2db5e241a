"""Master keys in local files: the ``file`` provider and the ``hsm-stub`` simulation.

Both are development-only (production refuses them): the master key lives on the same disk as
the data it protects, and in process memory. They share this one implementation; they differ
in name, directory and the variable that enables them.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from themisdb.errors import IntegrityError, KeyProviderUnavailable, MasterKeyMissing
from themisdb.keys._base import Health, key_id, split_header, with_header

_NONCE = 12
_KEY_BYTES = 32


class LocalKeyProvider:
    """AES-256-GCM key wrapping under master keys kept as files ``master-v<N>.key``."""

    def __init__(self, name: str, directory: Path, *, create: bool) -> None:
        self.name = name
        self.directory = directory
        self._lock = threading.Lock()
        self._keys: dict[int, AESGCM] = {}
        try:
            self._load()
            if not self._keys:
                if not create:
                    raise MasterKeyMissing(
                        f"{name}: no master key in {directory}; run `themisdb keys init`"
                    )
                self._create(1)
        except OSError as exc:
            raise KeyProviderUnavailable(f"{name}: cannot use {directory}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"LocalKeyProvider(name={self.name!r}, versions={sorted(self._keys)})"

    def _load(self) -> None:
        if not self.directory.exists():
            return
        for path in self.directory.glob("master-v*.key"):
            version = int(path.stem.removeprefix("master-v"))
            data = path.read_bytes()
            if len(data) != _KEY_BYTES:
                raise KeyProviderUnavailable(f"{self.name}: {path.name} is not a 32-byte key")
            self._keys[version] = AESGCM(data)

    def _create(self, version: int) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"master-v{version}.key"
        # O_EXCL: never overwrite a key; 0600: only this user may read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        material = secrets.token_bytes(_KEY_BYTES)
        try:
            os.write(fd, material)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._keys[version] = AESGCM(material)

    @property
    def _current(self) -> int:
        return max(self._keys)

    def current_key_id(self) -> str:
        return key_id(self._current)

    def wrap(self, dek: bytes, *, aad: bytes) -> bytes:
        version = self._current
        nonce = secrets.token_bytes(_NONCE)
        return with_header(version, nonce + self._keys[version].encrypt(nonce, dek, aad))

    def unwrap(self, wrapped: bytes, *, aad: bytes) -> bytes:
        version, body = split_header(wrapped)
        key = self._keys.get(version)
        if key is None or len(body) < _NONCE + 16:
            raise IntegrityError
        try:
            return key.decrypt(body[:_NONCE], body[_NONCE:], aad)
        except InvalidTag:
            raise IntegrityError from None

    def rotate(self) -> str:
        with self._lock:
            try:
                self._create(self._current + 1)
            except OSError as exc:
                raise KeyProviderUnavailable(
                    f"{self.name}: rotation failed: {exc.strerror}"
                ) from exc
        return self.current_key_id()

    def health(self) -> Health:
        return Health(True, f"{self.name}: {len(self._keys)} master key version(s) loaded")

    def close(self) -> None:
        self._keys.clear()
