"""Key providers: master keys that wrap data keys. See _base.py for the contract."""

from __future__ import annotations

from pathlib import Path

from themisdb.errors import ConfigError
from themisdb.keys._base import (
    Health,
    HealthChecked,
    KeyProvider,
    Rewrappable,
    Rotatable,
    key_id,
    split_header,
    with_header,
)
from themisdb.keys.local import LocalKeyProvider
from themisdb.settings import Settings

__all__ = [
    "Health",
    "HealthChecked",
    "KeyProvider",
    "LocalKeyProvider",
    "Rewrappable",
    "Rotatable",
    "key_id",
    "open_provider",
    "provider_name",
    "split_header",
    "with_header",
]


def provider_name(settings: Settings) -> str:
    """pkcs11 if THEMIS_HSM_ENABLED=1; else vault if THEMIS_VAULT_ADDR; else hsm-stub if
    THEMIS_ALLOW_HSM_STUB is true; else file."""
    if settings.hsm_enabled:
        return "pkcs11"
    if settings.vault_addr:
        return "vault"
    if settings.allow_hsm_stub:
        return "hsm-stub"
    return "file"


def open_provider(settings: Settings, *, create: bool) -> KeyProvider:
    """The configured provider. ``create`` makes a missing master key (``keys init``, and the
    first start in development); production never creates one silently."""
    name = provider_name(settings)
    if settings.production and name in ("file", "hsm-stub"):
        raise ConfigError(f"the {name} key provider is refused in production mode")
    data = Path(settings.data_dir)
    if name == "file":
        return LocalKeyProvider("file", data / "keys", create=create)
    if name == "hsm-stub":
        return LocalKeyProvider("hsm-stub", data / "hsm-stub", create=create)
    if name == "pkcs11":
        from themisdb.keys.pkcs11 import Pkcs11KeyProvider  # noqa: PLC0415 - optional library

        return Pkcs11KeyProvider.from_settings(settings, create=create)
    from themisdb.keys.vault import VaultKeyProvider  # noqa: PLC0415 - optional library

    return VaultKeyProvider.from_settings(settings, create=create)
