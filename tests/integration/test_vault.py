"""The ``vault`` key provider against a real OpenBao server (tests/services/openbao.py).

Beyond the conformance suite: cluster isolation by derivation context, a missing key, an outage
(seal/unseal) with recovery in the same object, token rotation by the token file, the key's
properties, secrecy of the token in every message, rewrapping and the batch helpers.
"""

from __future__ import annotations

import base64
import secrets
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.openbao import OpenBao, write_token_file
from themisdb.errors import ConfigError, IntegrityError, KeyProviderUnavailable, MasterKeyMissing
from themisdb.keys import open_provider, split_header, with_header
from themisdb.keys.vault import VaultKeyProvider
from themisdb.settings import load_settings

pytestmark = pytest.mark.integration

AAD = b"themis:customers:v1"


@pytest.fixture
def cluster(openbao: OpenBao, tmp_path: Path) -> dict[str, str]:
    """The variables of a new cluster, its transit key not created yet."""
    openbao.ensure_unsealed()
    return openbao.env(tmp_path)


@pytest.fixture
def opened(cluster: dict[str, str]) -> Iterator[VaultKeyProvider]:
    """A provider for ``cluster``, created as ``themisdb keys init`` would."""
    provider = VaultKeyProvider.from_settings(load_settings(cluster), create=True)
    yield provider
    provider.close()


def key_name(env: dict[str, str]) -> str:
    return f"themisdb-{env['THEMIS_CLUSTER_ID']}"


def token_of(env: dict[str, str]) -> str:
    return Path(env["THEMIS_VAULT_TOKEN_FILE"]).read_text().strip()


def everything_said(exc: BaseException) -> str:
    """The exception's text and full traceback, including chained causes."""
    return str(exc) + "".join(traceback.format_exception(exc))


# --- (a) cluster isolation --------------------------------------------------------------------


def test_another_clusters_context_cannot_unwrap(
    opened: VaultKeyProvider, cluster: dict[str, str]
) -> None:
    dek = secrets.token_bytes(32)
    wrapped = opened.wrap(dek, aad=AAD)
    # Cluster B: same Vault, same transit key name and a token allowed to use it, but its own
    # cluster id, hence its own derivation context.
    other = {
        **cluster,
        "THEMIS_VAULT_TRANSIT_KEY": key_name(cluster),
        "THEMIS_CLUSTER_ID": "cluster-b",
    }
    b = VaultKeyProvider.from_settings(load_settings(other), create=False)
    try:
        with pytest.raises(IntegrityError) as info:
            b.unwrap(wrapped, aad=AAD)
        assert str(info.value) == "integrity check failed"
        assert info.value.__cause__ is None  # nothing about why
        with pytest.raises(IntegrityError):
            opened.unwrap(b.wrap(dek, aad=AAD), aad=AAD)
        assert b.unwrap_many([b.wrap(dek, aad=AAD)], aad=AAD) == [dek]
        with pytest.raises(IntegrityError):
            b.unwrap_many([wrapped], aad=AAD)
    finally:
        b.close()
    # The same cluster in another process (same settings) reads it.
    again = VaultKeyProvider.from_settings(load_settings(cluster), create=False)
    try:
        assert again.unwrap(wrapped, aad=AAD) == dek
    finally:
        again.close()


# --- (b) missing key and configuration --------------------------------------------------------


def test_missing_key_without_create_is_master_key_missing(
    openbao: OpenBao, cluster: dict[str, str]
) -> None:
    settings = load_settings(cluster)
    with pytest.raises(MasterKeyMissing, match="run `themisdb keys init`") as info:
        VaultKeyProvider.from_settings(settings, create=False)
    assert key_name(cluster) in str(info.value)
    with pytest.raises(MasterKeyMissing):
        open_provider(settings, create=False)  # the path `themisdb serve` takes
    # Nothing was created behind our back (transit would upsert a key on encrypt).
    assert (
        key_name(cluster)
        not in (openbao.root.secrets.transit.list_keys(mount_point="transit")["data"]["keys"])
    )


def test_open_provider_creates_the_key_with_create(cluster: dict[str, str]) -> None:
    provider = open_provider(load_settings(cluster), create=True)
    try:
        assert isinstance(provider, VaultKeyProvider)
        assert provider.current_key_id() == "v1"
        dek = secrets.token_bytes(32)
        assert provider.unwrap(provider.wrap(dek, aad=AAD), aad=AAD) == dek
    finally:
        provider.close()


def test_no_cluster_id_and_no_key_name_is_a_config_error(openbao: OpenBao) -> None:
    settings = load_settings({"THEMIS_VAULT_ADDR": openbao.addr})
    with pytest.raises(ConfigError, match="THEMIS_CLUSTER_ID"):
        VaultKeyProvider.from_settings(settings, create=True)


def test_a_key_name_that_is_not_a_plain_name_is_refused(cluster: dict[str, str]) -> None:
    settings = load_settings({**cluster, "THEMIS_VAULT_TRANSIT_KEY": "../../sys/seal"})
    with pytest.raises(ConfigError, match="transit key name"):
        VaultKeyProvider.from_settings(settings, create=True)


def test_without_a_token_no_token_is_sent(
    openbao: OpenBao, cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No THEMIS_VAULT_TOKEN: requests go without one (for a Vault agent proxy). hvac must not
    pick up VAULT_TOKEN or ~/.vault-token instead."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".vault-token").write_text(openbao.root_token)
    settings = load_settings({k: v for k, v in cluster.items() if "TOKEN" not in k})
    with pytest.raises(KeyProviderUnavailable, match="permission denied"):
        VaultKeyProvider.from_settings(settings, create=True)


# --- (c) outage and recovery ------------------------------------------------------------------


def test_sealed_vault_is_unavailable_and_the_same_object_recovers(
    openbao: OpenBao, vault_provider: VaultKeyProvider
) -> None:
    dek = secrets.token_bytes(32)
    wrapped = vault_provider.wrap(dek, aad=AAD)
    assert vault_provider.health().ok
    with openbao.sealed():
        with pytest.raises(KeyProviderUnavailable, match=r"^vault: .*sealed") as info:
            vault_provider.wrap(dek, aad=AAD)
        assert info.value.__cause__ is not None  # raised from the client's exception
        with pytest.raises(KeyProviderUnavailable, match="sealed"):
            vault_provider.unwrap(wrapped, aad=AAD)
        with pytest.raises(KeyProviderUnavailable, match="sealed"):
            vault_provider.wrap_many([dek, dek], aad=AAD)
        with pytest.raises(KeyProviderUnavailable, match="sealed"):
            vault_provider.rotate()
        health = vault_provider.health()
        assert not health.ok
        assert "sealed" in health.detail
        facts = vault_provider.probe_facts()
        assert facts.reachable
        assert facts.sealed is True
    # Unsealed: the very same object works again, no restart, no reconnect by hand.
    assert vault_provider.unwrap(wrapped, aad=AAD) == dek
    assert vault_provider.unwrap(vault_provider.wrap(dek, aad=AAD), aad=AAD) == dek
    assert vault_provider.health().ok


def test_unreachable_vault_is_unavailable(cluster: dict[str, str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings({**cluster, "THEMIS_VAULT_ADDR": f"http://127.0.0.1:{port}"})
    with pytest.raises(KeyProviderUnavailable, match="unreachable") as info:
        VaultKeyProvider.from_settings(settings, create=True)
    assert str(info.value).startswith("vault: ")


def test_a_vault_that_does_not_answer_times_out(cluster: dict[str, str]) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        addr = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(KeyProviderUnavailable, match="timeout"):
            VaultKeyProvider(
                addr, key_name=key_name(cluster), context="c", create=False, timeout=0.5
            )


# --- (d) token rotation -----------------------------------------------------------------------


def test_token_file_rotation_is_picked_up(
    openbao: OpenBao, opened: VaultKeyProvider, cluster: dict[str, str]
) -> None:
    token_file = Path(cluster["THEMIS_VAULT_TOKEN_FILE"])
    old = token_of(cluster)
    dek = secrets.token_bytes(32)
    wrapped = opened.wrap(dek, aad=AAD)

    # Vault agent renews auth: a new token in the sink file, the old one revoked.
    new = openbao.issue_token(key_name(cluster))
    write_token_file(token_file, new)
    openbao.revoke(old)
    assert opened.unwrap(wrapped, aad=AAD) == dek
    assert opened.unwrap(opened.wrap(dek, aad=AAD), aad=AAD) == dek
    assert opened.health().ok
    facts = opened.probe_facts()
    assert facts.error is None
    assert facts.token_ttl_seconds is not None
    assert 0 < facts.token_ttl_seconds <= 3600

    # Revoked without a replacement: unavailable (not an integrity error) ...
    openbao.revoke(new)
    with pytest.raises(KeyProviderUnavailable, match="permission denied"):
        opened.unwrap(wrapped, aad=AAD)
    assert not opened.health().ok
    # ... until the agent writes a valid token again.
    write_token_file(token_file, openbao.issue_token(key_name(cluster)))
    assert opened.unwrap(wrapped, aad=AAD) == dek


# --- (e) the key's properties -----------------------------------------------------------------


def test_transit_key_is_derived_and_not_exportable(
    openbao: OpenBao, opened: VaultKeyProvider, cluster: dict[str, str]
) -> None:
    info = openbao.root.secrets.transit.read_key(key_name(cluster), mount_point="transit")["data"]
    assert info["type"] == "aes256-gcm96"
    assert info["derived"] is True
    assert info["exportable"] is False
    assert info["allow_plaintext_backup"] is False
    import hvac.exceptions  # type: ignore[import-untyped]

    # Even root cannot export it; the cluster's own token may not even ask.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not exportable"):
        openbao.root.secrets.transit.export_key(
            key_name(cluster), key_type="encryption-key", mount_point="transit"
        )
    with (
        openbao.client(token_of(cluster)) as scoped,
        pytest.raises(hvac.exceptions.Forbidden),
    ):
        scoped.secrets.transit.export_key(
            key_name(cluster), key_type="encryption-key", mount_point="transit"
        )
    facts = opened.probe_facts()
    assert facts.reachable
    assert facts.sealed is False
    assert facts.key_exists
    assert facts.key_exportable is False
    assert facts.token_is_root is False
    assert facts.token_ttl_seconds is not None
    assert 0 < facts.token_ttl_seconds <= 3600
    assert facts.error is None


def test_probe_facts_of_root_and_of_a_deleted_key(
    openbao: OpenBao, opened: VaultKeyProvider, cluster: dict[str, str]
) -> None:
    as_root = VaultKeyProvider(
        openbao.addr,
        key_name=key_name(cluster),
        context=cluster["THEMIS_CLUSTER_ID"],
        create=False,
        token=openbao.root_token,
    )
    try:
        facts = as_root.probe_facts()
        assert facts.token_is_root is True
        assert facts.token_ttl_seconds == 0  # never expires: what `themisdb check` flags
        openbao.root.secrets.transit.update_key_configuration(
            key_name(cluster), deletion_allowed=True, mount_point="transit"
        )
        openbao.root.secrets.transit.delete_key(key_name(cluster), mount_point="transit")
        facts = as_root.probe_facts()  # never raises
        assert not facts.key_exists
        assert facts.error is None
        health = as_root.health()
        assert not health.ok
        assert "does not exist" in health.detail
    finally:
        as_root.close()
    # The cluster's token may not create keys by encrypting (transit's upsert), so a deleted
    # key is reported, never silently replaced by a new one.
    with pytest.raises(MasterKeyMissing, match="keys init"):
        opened.wrap(secrets.token_bytes(32), aad=AAD)
    with pytest.raises(MasterKeyMissing):
        opened.unwrap_many([b"themis:v1:vault:v1:AAAA"], aad=AAD)


# --- (f) the token is never said --------------------------------------------------------------


def test_messages_and_repr_never_contain_the_token(
    openbao: OpenBao, opened: VaultKeyProvider, cluster: dict[str, str], tmp_path: Path
) -> None:
    token = token_of(cluster)
    dek = secrets.token_bytes(32)
    wrapped = opened.wrap(dek, aad=AAD)
    said = [repr(opened), str(opened), opened.health().detail, repr(opened.probe_facts())]

    with openbao.sealed():
        with pytest.raises(KeyProviderUnavailable) as sealed:
            opened.wrap(dek, aad=AAD)
        said.append(everything_said(sealed.value))
        with pytest.raises(KeyProviderUnavailable) as sealed:
            opened.unwrap(wrapped, aad=AAD)
        said.append(everything_said(sealed.value))
        said += [opened.health().detail, repr(opened.probe_facts())]

    with pytest.raises(IntegrityError) as integrity:
        opened.unwrap(wrapped, aad=b"themis:orders:v1")
    said.append(everything_said(integrity.value))

    openbao.revoke(token)
    with pytest.raises(KeyProviderUnavailable) as denied:
        opened.wrap(dek, aad=AAD)
    said += [everything_said(denied.value), opened.health().detail, repr(opened.probe_facts())]

    fresh = openbao.env(tmp_path)  # a cluster whose key was never created
    with pytest.raises(MasterKeyMissing) as missing:
        VaultKeyProvider.from_settings(load_settings(fresh), create=False)
    said.append(everything_said(missing.value))

    for text in said:
        assert token not in text
        assert token_of(fresh) not in text
        assert openbao.root_token not in text
    assert any("permission denied" in text for text in said)
    assert any("sealed" in text for text in said)


# --- (g) rewrap and batches -------------------------------------------------------------------


def test_rewrap_moves_old_wrapped_keys_to_the_newest_version(
    vault_provider: VaultKeyProvider,
) -> None:
    dek = secrets.token_bytes(32)
    old = vault_provider.wrap(dek, aad=AAD)
    assert split_header(old)[0] == 1
    assert vault_provider.rotate() == "v2"
    assert vault_provider.rotate() == "v3"
    new = vault_provider.rewrap(old, AAD)
    assert split_header(new)[0] == 3
    assert new.startswith(b"themis:v3:vault:v3:")
    assert vault_provider.unwrap(new, aad=AAD) == dek
    assert vault_provider.unwrap(old, aad=AAD) == dek  # old versions stay readable
    # The AAD stays bound through rewrapping.
    with pytest.raises(IntegrityError):
        vault_provider.unwrap(new, aad=b"themis:orders:v1")
    many = vault_provider.rewrap_many([old, vault_provider.wrap(dek, aad=AAD)])
    assert [split_header(w)[0] for w in many] == [3, 3]
    assert vault_provider.unwrap_many(many, aad=AAD) == [dek, dek]
    with pytest.raises(IntegrityError):
        vault_provider.rewrap(b"themis:v1:garbage", AAD)


def test_header_version_must_agree_with_vaults(vault_provider: VaultKeyProvider) -> None:
    dek = secrets.token_bytes(32)
    vault_provider.rotate()
    wrapped = vault_provider.wrap(dek, aad=AAD)
    version, body = split_header(wrapped)
    assert version == 2
    assert body.startswith(b"vault:v2:")
    for forged in (with_header(1, body), with_header(3, body)):
        with pytest.raises(IntegrityError):
            vault_provider.unwrap(forged, aad=AAD)
        with pytest.raises(IntegrityError):
            vault_provider.rewrap(forged, AAD)
    # A body spelled differently but decoding the same (non-canonical base64) is refused too.
    with pytest.raises(IntegrityError):
        vault_provider.unwrap(wrapped + b"\n", aad=AAD)


def test_batches_round_trip_across_chunks(vault_provider: VaultKeyProvider) -> None:
    count = 450  # more than two requests' worth
    deks = [secrets.token_bytes(32) for _ in range(count)]
    aads = [f"themis:table{i % 7}:v1".encode() for i in range(count)]
    wrapped = vault_provider.wrap_many(deks, aad=aads)
    assert len(wrapped) == count
    assert len(set(wrapped)) == count
    assert all(w.startswith(b"themis:v1:vault:v1:") for w in wrapped)
    assert vault_provider.unwrap_many(wrapped, aad=aads) == deks
    assert [vault_provider.unwrap(w, aad=a) for w, a in zip(wrapped[:3], aads, strict=False)] == (
        deks[:3]
    )
    same = vault_provider.wrap_many(deks[:5], aad=AAD)
    assert vault_provider.unwrap_many(same, aad=AAD) == deks[:5]
    assert vault_provider.wrap_many([], aad=AAD) == []
    # One wrong item fails the whole batch, with the one generic error.
    with pytest.raises(IntegrityError):
        vault_provider.unwrap_many(wrapped, aad=[*aads[:-1], b"themis:other:v1"])
    with pytest.raises(ValueError, match="aad"):
        vault_provider.wrap_many(deks[:3], aad=aads[:2])


def test_rotation_rewraps_every_data_key_inside_vault(
    vault_provider: VaultKeyProvider, tmp_path: Path
) -> None:
    """``Envelope.rewrap_all`` on Vault: one batched transit rewrap for every data key (they
    never leave Vault), old data stays readable, each table gets a DEK of the new version."""
    from themisdb.crypto import Envelope
    from themisdb.storage import Storage

    storage = Storage(tmp_path / "data")
    envelope = Envelope(vault_provider, storage, ttl=300)
    try:
        tables = ("customers", "orders", "staff")
        sealed = {
            t: envelope.encrypt_fields(t, "k1", {"secret": f"{t}-plaintext"}, frozenset({"secret"}))
            for t in tables
        }
        assert vault_provider.rotate() == "v2"
        before = envelope.provider_calls
        assert envelope.rewrap_all() == len(tables)
        # One rewrap batch plus one new DEK per table; unwrap-and-wrap would be 2 per DEK more.
        assert envelope.provider_calls - before == 1 + len(tables)
        stored = storage.deks()
        assert {split_header(base64.b64decode(w))[0] for _, _, w, _ in stored} == {2}
        envelope.forget()  # read the rewrapped keys back from Vault, not from the cache
        for table in tables:
            assert envelope.decrypt_fields(table, "k1", sealed[table]) == {
                "secret": f"{table}-plaintext"
            }
    finally:
        storage.close()
