"""One conformance suite that every key provider passes (file, hsm-stub, pkcs11, vault).

pkcs11 runs against a real SoftHSM2 token, vault against a real OpenBao server (both started
by fixtures in tests/services/)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from themisdb.errors import IntegrityError
from themisdb.keys import HealthChecked, KeyProvider, LocalKeyProvider, Rotatable, split_header

PROVIDERS = ["file", "hsm-stub", "pkcs11", "vault"]
AAD = b"themis:customers:v1"


@pytest.fixture
def file_provider(tmp_path: Path) -> Iterator[KeyProvider]:
    provider = LocalKeyProvider("file", tmp_path / "keys", create=True)
    yield provider
    provider.close()


@pytest.fixture
def stub_provider(tmp_path: Path) -> Iterator[KeyProvider]:
    provider = LocalKeyProvider("hsm-stub", tmp_path / "hsm-stub", create=True)
    yield provider
    provider.close()


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> KeyProvider:
    fixture = {
        "file": "file_provider",
        "hsm-stub": "stub_provider",
        "pkcs11": "pkcs11_provider",
        "vault": "vault_provider",
    }[request.param]
    result: KeyProvider = request.getfixturevalue(fixture)
    return result


def test_round_trip(provider: KeyProvider) -> None:
    dek = secrets.token_bytes(32)
    wrapped = provider.wrap(dek, aad=AAD)
    assert dek not in wrapped
    assert wrapped.startswith(b"themis:" + provider.current_key_id().encode() + b":")
    assert provider.unwrap(wrapped, aad=AAD) == dek
    assert provider.wrap(dek, aad=AAD) != wrapped  # fresh randomness every time


def test_wrong_aad_fails(provider: KeyProvider) -> None:
    wrapped = provider.wrap(secrets.token_bytes(32), aad=AAD)
    with pytest.raises(IntegrityError) as info:
        provider.unwrap(wrapped, aad=b"themis:orders:v1")
    assert str(info.value) == "integrity check failed"


@pytest.mark.parametrize("position", [0, 7, 12, 20, -17, -1])
def test_tampered_wrapped_key_fails_with_one_generic_error(
    provider: KeyProvider, position: int
) -> None:
    wrapped = bytearray(provider.wrap(secrets.token_bytes(32), aad=AAD))
    wrapped[position] ^= 0x01
    with pytest.raises(IntegrityError) as info:
        provider.unwrap(bytes(wrapped), aad=AAD)
    assert str(info.value) == "integrity check failed"


def test_truncated_and_garbage_inputs_fail_the_same_way(provider: KeyProvider) -> None:
    wrapped = provider.wrap(secrets.token_bytes(32), aad=AAD)
    for bad in (wrapped[:-1], wrapped[:12], b"", b"themis:v1:", b"garbage", b"themis:v999:abc"):
        with pytest.raises(IntegrityError):
            provider.unwrap(bad, aad=AAD)


def test_rotation_keeps_old_keys_readable(provider: KeyProvider) -> None:
    assert isinstance(provider, Rotatable)
    dek = secrets.token_bytes(32)
    old = provider.wrap(dek, aad=AAD)
    old_version, _ = split_header(old)
    new_id = provider.rotate()
    assert new_id == f"v{old_version + 1}"
    assert provider.current_key_id() == new_id
    new = provider.wrap(dek, aad=AAD)
    assert split_header(new)[0] == old_version + 1
    assert provider.unwrap(old, aad=AAD) == dek
    assert provider.unwrap(new, aad=AAD) == dek


def test_health(provider: KeyProvider) -> None:
    assert isinstance(provider, HealthChecked)
    health = provider.health()
    assert health.ok, health.detail


def test_repr_reveals_no_key_material(provider: KeyProvider) -> None:
    text = repr(provider) + str(provider)
    assert not re.search(r"\bb['\"]", text)  # no bytes literal
    assert "AESGCM" not in text
    assert len(text) < 400
