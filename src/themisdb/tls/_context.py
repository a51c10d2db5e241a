"""The server-side SSLContext of the API listener."""

from __future__ import annotations

import ssl

from themisdb.errors import ConfigError
from themisdb.settings import Settings

# TLS 1.2: ECDHE key exchange with AEAD ciphers only (forward secrecy, no CBC, no RSA kex).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The API's SSLContext, or None when no certificate is configured (plain HTTP)."""
    if not (settings.pki_certificate and settings.pki_private_key):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if settings.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(TLS12_CIPHERS)
    # No session tickets in any version: OP_NO_TICKET covers TLS 1.2 only; TLS 1.3 tickets
    # are governed by num_tickets.
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    passphrase = settings.pki_key_passphrase
    try:
        ctx.load_cert_chain(
            settings.pki_certificate,
            settings.pki_private_key,
            password=passphrase.get_secret_value() if passphrase else None,
        )
    except (OSError, ssl.SSLError) as exc:
        # Neither the passphrase nor key bytes are in the message: name the variables only.
        raise ConfigError(
            "THEMIS_PKI_CERTIFICATE / THEMIS_PKI_PRIVATE_KEY: cannot load the pair "
            f"({getattr(exc, 'strerror', None) or 'bad file, wrong passphrase or mismatched key'})"
        ) from exc
    return ctx
