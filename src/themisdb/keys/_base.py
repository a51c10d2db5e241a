"""The key-provider interface: master keys that wrap and unwrap data keys (DEKs). Nothing else.

Providers never encrypt bulk data; ``themisdb.crypto`` does, once. A wrapped DEK is
``b"themis:v<N>:" + provider bytes`` where N is the master key version that wrapped it, so that
rotation can keep old versions readable and rewrap to the newest.

Capabilities beyond the core are separate protocols, detected at runtime:
``Rotatable`` (new master key version) and ``HealthChecked`` (cheap liveness probe).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from themisdb.errors import IntegrityError

_HEADER = re.compile(rb"themis:v([1-9][0-9]{0,8}):")


class KeyProvider(Protocol):
    name: str

    def wrap(self, dek: bytes, *, aad: bytes) -> bytes:
        """Wrap ``dek`` under the current master key version, bound to ``aad``."""
        ...

    def unwrap(self, wrapped: bytes, *, aad: bytes) -> bytes:
        """Unwrap; IntegrityError for anything not wrapped here with this aad,
        KeyProviderUnavailable when the key manager cannot answer."""
        ...

    def current_key_id(self) -> str:
        """The current master key version, ``v<N>``."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Rotatable(Protocol):
    def rotate(self) -> str:
        """Create a new master key version, make it current, return its id."""
        ...


@runtime_checkable
class Rewrappable(Protocol):
    def rewrap_many(self, wrapped: Sequence[bytes]) -> list[bytes]:
        """Move wrapped keys to the newest master key version inside the key manager, without
        the data keys ever leaving it (Vault transit rewrap)."""
        ...


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


@runtime_checkable
class HealthChecked(Protocol):
    def health(self) -> Health: ...


def with_header(version: int, body: bytes) -> bytes:
    return b"themis:v%d:" % version + body


def split_header(wrapped: bytes) -> tuple[int, bytes]:
    """(version, provider bytes); IntegrityError when the header is missing or malformed."""
    match = _HEADER.match(wrapped)
    if match is None:
        raise IntegrityError
    return int(match.group(1)), wrapped[match.end() :]


def key_id(version: int) -> str:
    return f"v{version}"


def pack_aad(aad: bytes, dek: bytes) -> bytes:
    """For key managers without associated data (Vault transit): the AAD travels inside the
    authenticated plaintext, length-prefixed, and is compared on unwrap."""
    return len(aad).to_bytes(4, "big") + aad + dek


def unpack_aad(plaintext: bytes, aad: bytes) -> bytes:
    if len(plaintext) < 4:
        raise IntegrityError
    size = int.from_bytes(plaintext[:4], "big")
    if plaintext[4 : 4 + size] != aad or len(plaintext) < 4 + size:
        raise IntegrityError
    return plaintext[4 + size :]
