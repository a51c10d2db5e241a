"""Probe kinds the rules ask for, and the probes this package can run itself.

A probe does the I/O; a rule only reads its result. The CLI and the server hand
``default_probes()`` to ``evaluate``; later subsystems add theirs (Vault, HSM, audit sinks).
A rule whose probe was not handed in reports ``unverified``, never a guess.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from themisdb.posture._model import Probe, ProbeKind
from themisdb.settings import Settings
from themisdb.tls import CertificateFacts, inspect_certificate
from themisdb.tls._inspect import chain_problem

_HASH_LIMIT = 1 << 20  # CA bundles are small; do not hash arbitrary large files


@dataclass(frozen=True)
class FileInfo:
    path: str
    exists: bool
    readable: bool = False
    is_file: bool = False
    mode: int = 0
    mtime: float = 0.0
    sha256: str | None = None
    error: str | None = None

    @property
    def problem(self) -> str | None:
        """Why this file cannot be used, or None."""
        if not self.exists:
            return f"{self.path} does not exist"
        if not self.is_file:
            return f"{self.path} is not a regular file"
        if not self.readable:
            return f"{self.path} is not readable ({self.error or 'permission denied'})"
        return None


@dataclass
class FileSystemView:
    """Looks at files on demand, once each."""

    _cache: dict[str, FileInfo] = field(default_factory=dict)

    def info(self, path: str) -> FileInfo:
        if path not in self._cache:
            self._cache[path] = _look_at(path)
        return self._cache[path]


def _look_at(path: str) -> FileInfo:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileInfo(path, exists=False)
    except OSError as exc:
        return FileInfo(path, exists=False, error=exc.strerror)
    if not stat.S_ISREG(st.st_mode):
        return FileInfo(path, exists=True, mode=st.st_mode, mtime=st.st_mtime)
    digest: str | None = None
    try:
        with open(path, "rb") as handle:
            data = handle.read(_HASH_LIMIT + 1)
        readable = True
        if len(data) <= _HASH_LIMIT:
            digest = hashlib.sha256(data).hexdigest()
        error = None
    except OSError as exc:
        readable, error = False, exc.strerror
    return FileInfo(
        path,
        exists=True,
        readable=readable,
        is_file=True,
        mode=stat.S_IMODE(st.st_mode),
        mtime=st.st_mtime,
        sha256=digest,
        error=error,
    )


@dataclass(frozen=True)
class CertificateSet:
    """Facts about each configured certificate, by role."""

    api: CertificateFacts | None = None
    wal: CertificateFacts | None = None
    api_chain_problem: str | None = None  # only computed when THEMIS_TLS_CA is set
    wal_chain_problem: str | None = None  # the WAL certificate against the replication CA


@dataclass(frozen=True)
class KeyManagerFacts:
    """What the key manager (HSM or Vault) says, live. Filled by themisdb.keys.probe."""

    provider: str
    reachable: bool
    key_exists: bool
    key_protected: bool | None  # HSM: sensitive and non-extractable; Vault: not exportable
    sealed: bool | None = None
    token_ttl_seconds: int | None = None  # Vault: 0 means the token never expires
    token_is_root: bool | None = None
    error: str | None = None
    audit_key_exists: bool | None = None  # HSM: the <key label>-audit signing key pair


FILES: ProbeKind[FileSystemView] = ProbeKind("files", "stat and read configured files")
CERTIFICATES: ProbeKind[CertificateSet] = ProbeKind(
    "certificates", "parse the configured certificates and keys"
)
MASTER_KEY_AGE: ProbeKind[float | None] = ProbeKind(
    "master_key_age", "read when the database started using its newest master key"
)
AUDIT_SINKS: ProbeKind[dict[str, str | None]] = ProbeKind(
    "audit_sinks", "connect to every syslog/SIEM output (tls: complete the handshake)"
)
KEY_MANAGER: ProbeKind[KeyManagerFacts] = ProbeKind(
    "key_manager", "ask the HSM or Vault about the master key and the credentials"
)


class FileProbe:
    kind = FILES

    def run(self, settings: Settings) -> FileSystemView:
        return FileSystemView()


class CertificateProbe:
    kind = CERTIFICATES

    def run(self, settings: Settings) -> CertificateSet:
        passphrase = settings.pki_key_passphrase
        api = wal = None
        if settings.pki_certificate:
            api = inspect_certificate(
                settings.pki_certificate,
                settings.pki_private_key,
                passphrase.get_secret_value().encode() if passphrase else None,
            )
        if settings.wal_grpc_cert_path:
            wal = inspect_certificate(settings.wal_grpc_cert_path, settings.wal_grpc_key_path)
        chain = None
        if settings.pki_certificate and settings.tls_ca:
            host = settings.service_hostname or settings.http_bind_address
            chain = chain_problem(settings.pki_certificate, settings.tls_ca, host)
        wal_chain = None
        if settings.wal_grpc_cert_path and settings.wal_grpc_ca_cert_path:
            wal_chain = chain_problem(
                settings.wal_grpc_cert_path,
                settings.wal_grpc_ca_cert_path,
                None,
                "THEMIS_WAL_GRPC_CA_CERT_PATH",
            )
        return CertificateSet(
            api=api, wal=wal, api_chain_problem=chain, wal_chain_problem=wal_chain
        )


def default_probes() -> list[Probe[Any]]:
    """Every probe: the filesystem, certificates, and the key manager (HSM or Vault)."""
    from themisdb.audit.probe import AuditSinkProbe  # noqa: PLC0415 - audit imports settings
    from themisdb.keys.probe import (  # noqa: PLC0415 - keys imports posture
        KeyManagerProbe,
        MasterKeyAgeProbe,
    )

    return [
        FileProbe(),
        CertificateProbe(),
        KeyManagerProbe(),
        MasterKeyAgeProbe(),
        AuditSinkProbe(),
    ]
