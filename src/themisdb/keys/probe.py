"""The posture probe of the key manager: asks the HSM or Vault what the checklist needs."""

from __future__ import annotations

from themisdb.database import MASTER_KEY_SINCE
from themisdb.errors import ConfigError, KeyProviderUnavailable, MasterKeyMissing
from themisdb.keys import open_provider, provider_name
from themisdb.posture.probes import KEY_MANAGER, MASTER_KEY_AGE, KeyManagerFacts
from themisdb.settings import Settings
from themisdb.storage import read_meta


class KeyManagerProbe:
    kind = KEY_MANAGER

    def run(self, settings: Settings) -> KeyManagerFacts:
        name = provider_name(settings)
        if name not in ("pkcs11", "vault"):
            return KeyManagerFacts(name, reachable=True, key_exists=True, key_protected=False)
        try:
            provider = open_provider(settings, create=False)
        except MasterKeyMissing:
            return KeyManagerFacts(
                name,
                reachable=True,
                key_exists=False,
                key_protected=None,
                error="no master key: run `themisdb keys init`",
            )
        except (KeyProviderUnavailable, ConfigError) as exc:
            return KeyManagerFacts(
                name, reachable=False, key_exists=False, key_protected=None, error=str(exc)
            )
        try:
            if name == "pkcs11":
                from themisdb.keys.pkcs11 import Pkcs11KeyProvider  # noqa: PLC0415

                assert isinstance(provider, Pkcs11KeyProvider)
                hsm = provider.probe_facts()
                return KeyManagerFacts(
                    name,
                    reachable=hsm.login_ok,
                    key_exists=bool(hsm.key_versions),
                    key_protected=hsm.all_non_extractable,
                    error=hsm.error,
                    audit_key_exists=hsm.audit_key_exists if hsm.login_ok else None,
                )
            from themisdb.keys.vault import VaultKeyProvider  # noqa: PLC0415

            assert isinstance(provider, VaultKeyProvider)
            vault = provider.probe_facts()
            return KeyManagerFacts(
                name,
                reachable=vault.reachable and not vault.sealed,
                key_exists=vault.key_exists,
                key_protected=None if vault.key_exportable is None else not vault.key_exportable,
                sealed=vault.sealed,
                token_ttl_seconds=vault.token_ttl_seconds,
                token_is_root=vault.token_is_root,
                error=vault.error,
            )
        finally:
            provider.close()


class MasterKeyAgeProbe:
    """When this database started using its newest master key (recorded at start-up and at
    rotation), read from the data directory without opening the key manager."""

    kind = MASTER_KEY_AGE

    def run(self, settings: Settings) -> float | None:
        noted = read_meta(settings.data_dir, MASTER_KEY_SINCE)
        if not noted:
            return None
        return max(float(value) for value in noted.values())
