"""Certificate inspection: the spec's requirements on a certificate, read from real files.

Pure functions of file contents and a time; no network. The posture engine calls them through
its certificate probe; the TLS server will call them before it serves a new pair.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

MIN_RSA_BITS = 3072
ALLOWED_CURVES = ("secp256r1", "secp384r1")
MAX_VALIDITY_DAYS = 397


@dataclass(frozen=True)
class CertificateFacts:
    """What a certificate file says about itself (first certificate of the PEM file)."""

    path: str
    error: str | None = None  # unreadable or unparsable: nothing else is meaningful
    key_description: str = ""
    key_strong: bool = False
    not_before: datetime | None = None
    not_after: datetime | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    key_matches: bool | None = None  # None: no key file given
    key_error: str | None = None

    @property
    def validity_days(self) -> float:
        if self.not_before is None or self.not_after is None:
            return 0.0
        return (self.not_after - self.not_before).total_seconds() / 86400

    def matches_hostname(self, hostname: str) -> bool:
        """RFC 6125 matching against the SANs (the subject CN is not consulted)."""
        try:
            address = ipaddress.ip_address(hostname.strip("[]"))
        except ValueError:
            name = hostname.rstrip(".").lower()
            return any(_dns_match(pattern, name) for pattern in self.dns_names)
        return any(ipaddress.ip_address(ip) == address for ip in self.ip_addresses)


def _dns_match(pattern: str, name: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        # A wildcard stands for exactly one whole left-most label.
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def describe_key(key: object) -> tuple[str, bool]:
    """A short description of a public key and whether the spec accepts it."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}", key.key_size >= MIN_RSA_BITS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA-{key.curve.name}", key.curve.name in ALLOWED_CURVES
    return type(key).__name__, False


def inspect_certificate(
    cert_path: str, key_path: str | None = None, passphrase: bytes | None = None
) -> CertificateFacts:
    """Read a PEM certificate (and optionally its private key) and report the facts."""
    try:
        data = Path(cert_path).read_bytes()
    except OSError as exc:
        return CertificateFacts(cert_path, error=f"cannot read it ({exc.strerror})")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return CertificateFacts(cert_path, error="not a PEM X.509 certificate")

    public_key = cert.public_key()
    key_description, key_strong = describe_key(public_key)
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        assert isinstance(san, x509.SubjectAlternativeName)
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass

    key_matches: bool | None = None
    key_error: str | None = None
    if key_path:
        key_matches, key_error = _key_matches(public_key, key_path, passphrase)

    return CertificateFacts(
        path=cert_path,
        key_description=key_description,
        key_strong=key_strong,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns_names,
        ip_addresses=ips,
        key_matches=key_matches,
        key_error=key_error,
    )


def _key_matches(
    public_key: object, key_path: str, passphrase: bytes | None
) -> tuple[bool | None, str | None]:
    try:
        data = Path(key_path).read_bytes()
    except OSError as exc:
        return None, f"cannot read the private key ({exc.strerror})"
    try:
        private_key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        # cryptography says TypeError when a passphrase is missing or superfluous.
        return None, "the private key is encrypted and no passphrase is set, or vice versa"
    except ValueError:
        return None, "cannot load the private key: wrong passphrase or not a PEM key"
    mine = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return mine == theirs, None


def chain_problem(
    cert_path: str, ca_path: str, hostname: str | None, ca_variable: str = "THEMIS_TLS_CA"
) -> str | None:
    """Why the chain in ``cert_path`` (leaf first, then intermediates) does not verify against
    the CAs in ``ca_path`` for ``hostname`` now, or None when it does."""
    from cryptography.x509.verification import (  # noqa: PLC0415 - rarely needed
        PolicyBuilder,
        Store,
        VerificationError,
    )

    try:
        chain = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
        roots = x509.load_pem_x509_certificates(Path(ca_path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"cannot read the certificate or the CA bundle ({type(exc).__name__})"
    builder = PolicyBuilder().store(Store(roots))
    try:
        if hostname:
            try:
                name: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(hostname))
            except ValueError:
                name = x509.DNSName(hostname)
            builder.build_server_verifier(name).verify(chain[0], chain[1:])
        else:
            builder.build_client_verifier().verify(chain[0], chain[1:])
    except VerificationError as exc:
        return f"does not verify against {ca_variable}: {exc}"
    return None
