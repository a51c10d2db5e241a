"""TLS: certificate inspection (and, later, SSLContext building and reload)."""

from themisdb.tls._context import server_context
from themisdb.tls._inspect import (
    MAX_VALIDITY_DAYS,
    CertificateFacts,
    inspect_certificate,
)

__all__ = ["MAX_VALIDITY_DAYS", "CertificateFacts", "inspect_certificate", "server_context"]
