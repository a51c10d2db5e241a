"""TLS: the specification's server profile, certificate inspection, hot reload."""

from themisdb.tls._context import (
    TLS13_SUITES,
    build_context,
    profile_context,
    server_context,
    watch_handshake_failures,
)
from themisdb.tls._inspect import MAX_VALIDITY_DAYS, CertificateFacts, inspect_certificate
from themisdb.tls._reload import TlsReloader

__all__ = [
    "MAX_VALIDITY_DAYS",
    "TLS13_SUITES",
    "CertificateFacts",
    "TlsReloader",
    "build_context",
    "inspect_certificate",
    "profile_context",
    "server_context",
    "watch_handshake_failures",
]
