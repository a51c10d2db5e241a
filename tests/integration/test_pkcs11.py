"""The pkcs11 key provider against a real SoftHSM2 token (tests/services/softhsm.py).

What the conformance suite cannot see: how the master key objects look inside the token, the
failure modes (no key, wrong PIN, extractable key, token gone and back) and many threads."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.types import Session

from tests.helpers import REPO
from tests.services.softhsm import SoftHsm, unique_key_label
from themisdb.errors import IntegrityError, KeyProviderUnavailable, MasterKeyMissing
from themisdb.keys import Health, open_provider
from themisdb.keys.pkcs11 import PKCS11_LOCK, HsmFacts, Pkcs11KeyProvider

pytestmark = pytest.mark.integration

AAD = b"themis:customers:v1"
STRESS = REPO / "scripts" / "softhsm-stress.py"


@contextmanager
def token_session(softhsm: SoftHsm) -> Iterator[Session]:
    """A read-write session of this process on the test token, under the process-wide lock.
    It opens without a PIN: the process is logged in while any provider is open."""
    with PKCS11_LOCK:
        token = pkcs11.lib(softhsm.library).get_token(token_label=softhsm.token_label)
        session = token.open(rw=True)
        try:
            yield session
        finally:
            session.close()


def eventually(probe: Callable[[], Health], seconds: float = 10.0) -> Health:
    """Poll until the health probe is ok (recovery is attempted at most every 0.5 s)."""
    deadline = time.monotonic() + seconds
    health = probe()
    while not health.ok and time.monotonic() < deadline:
        time.sleep(0.1)
        health = probe()
    return health


def test_master_key_objects_are_sensitive_and_never_extractable(
    softhsm: SoftHsm, pkcs11_provider: Pkcs11KeyProvider
) -> None:
    pkcs11_provider.rotate()
    wanted = [
        Attribute.CLASS,
        Attribute.KEY_TYPE,
        Attribute.VALUE_LEN,
        Attribute.TOKEN,
        Attribute.PRIVATE,
        Attribute.SENSITIVE,
        Attribute.EXTRACTABLE,
        Attribute.ALWAYS_SENSITIVE,
        Attribute.NEVER_EXTRACTABLE,
        Attribute.ENCRYPT,
        Attribute.DECRYPT,
        Attribute.WRAP,
    ]
    with token_session(softhsm) as session:
        for version in (1, 2):
            key = session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=f"{pkcs11_provider.key_label}-v{version}"
            )
            attrs = key.get_attributes(wanted)
            with pytest.raises(AttributeSensitive):
                key[Attribute.VALUE]  # the token refuses to reveal it
            assert attrs == {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE_LEN: 32,
                Attribute.TOKEN: True,  # persistent: survives the session and the process
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ALWAYS_SENSITIVE: True,  # generated in the token, never imported
                Attribute.NEVER_EXTRACTABLE: True,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
            }


def test_keys_persist_in_the_token_across_providers(
    softhsm: SoftHsm, tmp_path: Path, pkcs11_provider: Pkcs11KeyProvider
) -> None:
    dek = secrets.token_bytes(32)
    wrapped = pkcs11_provider.wrap(dek, aad=AAD)
    settings = softhsm.settings(tmp_path, THEMIS_HSM_KEY_LABEL=pkcs11_provider.key_label)
    second = open_provider(settings, create=False)
    try:
        assert isinstance(second, Pkcs11KeyProvider)
        assert second.unwrap(wrapped, aad=AAD) == dek
    finally:
        second.close()
    # Closing the second provider must not log the first one out (C_Login is per process).
    assert pkcs11_provider.unwrap(pkcs11_provider.wrap(dek, aad=AAD), aad=AAD) == dek


def test_missing_master_key_without_create(softhsm: SoftHsm, tmp_path: Path) -> None:
    label = unique_key_label()
    settings = softhsm.settings(tmp_path, THEMIS_HSM_KEY_LABEL=label)
    with pytest.raises(MasterKeyMissing, match="themisdb keys init"):
        Pkcs11KeyProvider.from_settings(settings, create=False)
    provider = Pkcs11KeyProvider.from_settings(settings, create=True)  # nothing was left open
    try:
        assert provider.current_key_id() == "v1"
    finally:
        provider.close()


@pytest.mark.parametrize("already_logged_in", [False, True])
def test_wrong_pin_is_refused_without_echoing_it(
    softhsm: SoftHsm, tmp_path: Path, request: pytest.FixtureRequest, already_logged_in: bool
) -> None:
    if already_logged_in:
        # The trap: once the process is logged in, C_Login answers UserAlreadyLoggedIn to any
        # PIN, without checking it.
        request.getfixturevalue("pkcs11_provider")
    wrong = "wrong-" + secrets.token_hex(6)
    settings = softhsm.settings(
        tmp_path,
        THEMIS_HSM_KEY_LABEL=unique_key_label(),
        THEMIS_HSM_PIN_FILE="",
        THEMIS_HSM_PIN=wrong,
    )
    with pytest.raises(KeyProviderUnavailable) as info:
        Pkcs11KeyProvider.from_settings(settings, create=True)
    text = str(info.value) + repr(info.value)
    assert text.startswith("pkcs11: ")
    assert wrong not in text
    assert softhsm.pin not in text
    assert ("PIN" in text) or ("PinIncorrect" in text)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("THEMIS_HSM_LIBRARY", "/nonexistent/libpkcs11.so", "cannot load the PKCS#11 library"),
        ("THEMIS_HSM_TOKEN_LABEL", "no-such-token", "no single token has that label"),
    ],
)
def test_unusable_library_or_token_is_unavailable(
    softhsm: SoftHsm, tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    settings = softhsm.settings(
        tmp_path, THEMIS_HSM_KEY_LABEL=unique_key_label(), **{variable: value}
    )
    with pytest.raises(KeyProviderUnavailable, match=expected) as info:
        Pkcs11KeyProvider.from_settings(settings, create=True)
    assert softhsm.pin not in str(info.value)


def test_extractable_master_key_is_refused(
    softhsm: SoftHsm, tmp_path: Path, pkcs11_provider: Pkcs11KeyProvider
) -> None:
    label = unique_key_label()
    with token_session(softhsm) as session:  # logged in through pkcs11_provider
        session.generate_key(
            KeyType.AES,
            256,
            label=f"{label}-v1",
            store=True,
            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    settings = softhsm.settings(tmp_path, THEMIS_HSM_KEY_LABEL=label)
    for create in (False, True):
        with pytest.raises(KeyProviderUnavailable, match=f"{label}-v1") as info:
            Pkcs11KeyProvider.from_settings(settings, create=create)
        assert "extractable" in str(info.value)


def test_extractable_version_appearing_later_is_reported_and_refused(
    softhsm: SoftHsm, pkcs11_provider: Pkcs11KeyProvider
) -> None:
    label = f"{pkcs11_provider.key_label}-v2"
    with token_session(softhsm) as session:
        session.generate_key(
            KeyType.AES, 256, label=label, store=True, template={Attribute.EXTRACTABLE: True}
        )
    facts = pkcs11_provider.probe_facts()
    assert facts == HsmFacts(
        login_ok=True, key_versions=("v1", "v2"), all_non_extractable=False, error=None
    )
    with pytest.raises(KeyProviderUnavailable, match=label):
        pkcs11_provider.rotate()
    dek = secrets.token_bytes(32)
    assert pkcs11_provider.current_key_id() == "v1"  # never moved to the extractable one
    assert pkcs11_provider.unwrap(pkcs11_provider.wrap(dek, aad=AAD), aad=AAD) == dek
    forged = pkcs11_provider.wrap(dek, aad=AAD).replace(b"themis:v1:", b"themis:v2:")
    with pytest.raises(KeyProviderUnavailable, match=label):
        pkcs11_provider.unwrap(forged, aad=AAD)


def test_probe_facts_and_repr(softhsm: SoftHsm, pkcs11_provider: Pkcs11KeyProvider) -> None:
    pkcs11_provider.rotate()
    facts = pkcs11_provider.probe_facts()
    assert facts == HsmFacts(
        login_ok=True, key_versions=("v1", "v2"), all_non_extractable=True, error=None
    )
    text = repr(pkcs11_provider) + str(pkcs11_provider)
    assert softhsm.pin not in text
    assert "versions=[1, 2]" in text


def test_outage_then_recovery_in_the_same_provider(
    softhsm: SoftHsm, tmp_path: Path, pkcs11_provider: Pkcs11KeyProvider
) -> None:
    provider = pkcs11_provider
    other = Pkcs11KeyProvider.from_settings(
        softhsm.settings(tmp_path, THEMIS_HSM_KEY_LABEL=unique_key_label()), create=True
    )
    try:
        dek = secrets.token_bytes(32)
        before = provider.wrap(dek, aad=AAD)
        other_before = other.wrap(dek, aad=AAD)
        softhsm.take_away()
        try:
            with pytest.raises(KeyProviderUnavailable) as info:
                provider.unwrap(before, aad=AAD)  # cached handle: the token says it is invalid
            assert str(info.value).startswith("pkcs11: ")
            with pytest.raises(KeyProviderUnavailable):
                provider.wrap(dek, aad=AAD)  # re-initialises: no token with that label
            health = provider.health()
            assert not health.ok
            assert health.detail.startswith("pkcs11: ")
            facts = provider.probe_facts()
            assert not facts.login_ok
            assert facts.error
        finally:
            softhsm.bring_back()

        health = eventually(provider.health)
        assert health.ok, health.detail
        assert provider.unwrap(before, aad=AAD) == dek
        assert provider.unwrap(provider.wrap(dek, aad=AAD), aad=AAD) == dek
        with pytest.raises(IntegrityError):  # bad input is still an integrity failure
            provider.unwrap(before, aad=b"themis:orders:v1")
        # The other provider of the process lost its sessions to the re-initialisation and
        # rebuilds them without an error reaching its caller.
        assert other.unwrap(other_before, aad=AAD) == dek
        assert other.health().ok
    finally:
        other.close()


def test_pin_refused_on_reconnection_is_not_retried(
    softhsm: SoftHsm, pkcs11_provider: Pkcs11KeyProvider
) -> None:
    new_pin = secrets.token_hex(8)
    with token_session(softhsm) as session:  # a user session: pkcs11_provider logged in
        session.set_pin(softhsm.pin, new_pin)
    try:
        softhsm.take_away()
        try:
            with pytest.raises(KeyProviderUnavailable):
                pkcs11_provider.wrap(b"k" * 32, aad=AAD)
        finally:
            softhsm.bring_back()
        deadline = time.monotonic() + 10
        detail = pkcs11_provider.health().detail
        while "PIN" not in detail and time.monotonic() < deadline:
            time.sleep(0.1)
            detail = pkcs11_provider.health().detail
        assert "rejected the PIN" in detail
        time.sleep(0.6)  # past the recovery interval: still no new attempt with that PIN
        with pytest.raises(KeyProviderUnavailable, match="not retrying") as info:
            pkcs11_provider.wrap(b"k" * 32, aad=AAD)
        assert softhsm.pin not in str(info.value)
        assert new_pin not in str(info.value)
    finally:
        with PKCS11_LOCK:
            token = pkcs11.lib(softhsm.library).get_token(token_label=softhsm.token_label)
            session = token.open(rw=True, user_pin=new_pin)
            try:
                session.set_pin(new_pin, softhsm.pin)
            finally:
                session.close()  # logs this process out again


def test_concurrent_round_trips_in_a_subprocess(softhsm: SoftHsm, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        **softhsm.env(tmp_path),
        "THEMIS_HSM_KEY_LABEL": unique_key_label(),
        "THEMIS_HSM_SESSION_POOL": "4",
    }
    result = subprocess.run(
        [sys.executable, str(STRESS), "--threads", "16", "--seconds", "10", "--max-ops", "200000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    # A crash inside the PKCS#11 library (two threads in SoftHSM) shows as -11 (SIGSEGV).
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert report["mismatches"] == 0
    assert report["failures"] == []
    assert report["ops"] == 200000 or report["seconds"] >= 10  # a sustained run
    assert report["ops"] > 100
