"""Shared test helpers: real certificates, real files, a real server subprocess."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from themisdb.audit import Signer
from themisdb.posture import generate_token

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "docs" / "spec" / "security-defaults-v1.4.txt"


def write_cert(
    directory: Path,
    name: str,
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    days: int = 90,
    key: str = "ec-p256",
    not_before: dt.datetime | None = None,
    passphrase: bytes | None = None,
    issuer: tuple[Path, Path] | None = None,
    ca: bool = False,
) -> tuple[Path, Path]:
    """A certificate and its key, as PEM files with mode 0600 for the key: self-signed, or
    issued by ``issuer`` (the (certificate, key) paths of a ``ca=True`` certificate)."""
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key == "ec-p256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif key == "ec-p384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif key.startswith("rsa-"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=int(key[4:]))
    else:
        raise ValueError(key)
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    signer: Any = private
    issuer_name = subject
    if issuer is not None:
        issuer_cert = x509.load_pem_x509_certificate(issuer[0].read_bytes())
        signer = serialization.load_pem_private_key(issuer[1].read_bytes(), password=None)
        issuer_name = issuer_cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
    cert = builder.sign(signer, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    key_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def write_secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def replication_env(
    directory: Path, *, days: int = 20, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A leader with complete mTLS material (certificate, key, dedicated CA), then overrides."""
    ca, ca_key = write_cert(directory, "wal-ca", hostnames=("wal-ca",), days=days, ca=True)
    cert, key = write_cert(directory, "wal", hostnames=("node-1",), days=days, issuer=(ca, ca_key))
    return {
        "THEMIS_ROLE": "leader",
        "THEMIS_WAL_GRPC_ENABLE_MTLS": "1",
        "THEMIS_WAL_GRPC_REQUIRE_CLIENT_CERT": "1",
        "THEMIS_WAL_GRPC_CERT_PATH": str(cert),
        "THEMIS_WAL_GRPC_KEY_PATH": str(key),
        "THEMIS_WAL_GRPC_CA_CERT_PATH": str(ca),
        **(overrides or {}),
    }


AUDIT_SYSLOG_YAML = """\
logging:
  audit:
    enabled: true
    outputs:
      - type: syslog
        server: 127.0.0.1:6514
        protocol: tcp
    signing:
      enabled: true
      algorithm: ECDSA-P256
"""


def hardened_env(directory: Path, key_manager: Mapping[str, str] | None = None) -> dict[str, str]:
    """A production environment in which every must-rule that is pure configuration holds,
    backed by real files (certificates, secret files, the YAML config). ``key_manager``: the
    variables of a real one (e.g. the SoftHSM2 fixture's ``env()``) for tests that start the
    server; without it the HSM variables only satisfy the configuration rules."""
    cert, key = write_cert(directory, "server")
    config = directory / "themis.yaml"
    config.write_text(AUDIT_SYSLOG_YAML)
    signing_key = directory / "audit-signing.pem"
    if not signing_key.exists():
        Signer.create(signing_key)
    return {
        "THEMIS_AUDIT_SIGNING_KEY_FILE": str(signing_key),
        "THEMIS_PRODUCTION_MODE": "1",
        "THEMIS_ENVIRONMENT": "production",
        "THEMIS_TOKEN_ADMIN_FILE": str(write_secret(directory, "admin-token", generate_token())),
        "THEMIS_HSM_ENABLED": "1",
        "THEMIS_HSM_PIN_FILE": str(write_secret(directory, "hsm-pin", "8f3Kq9zX")),
        "THEMIS_CLUSTER_ID": "cluster-test-1",
        "THEMIS_PKI_CERTIFICATE": str(cert),
        "THEMIS_PKI_PRIVATE_KEY": str(key),
        "THEMIS_SERVICE_HOSTNAME": "localhost",
        "THEMIS_TLS_MIN_VERSION": "1.3",
        "THEMIS_PII_STRICT": "1",
        "THEMIS_DISABLE_AUTO_DOWNLOAD": "1",
        "THEMIS_CONFIG": str(config),
        "THEMIS_DATA_DIR": str(directory / "data"),
        **(key_manager or {}),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_process_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without any THEMIS_* leaking in, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "themisdb", *args],
        env=base_process_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ServerProcess:
    """A real ``themisdb serve`` subprocess listening on free loopback ports."""

    process: subprocess.Popen[bytes]
    http_port: int
    health_port: int
    log: Path  # stdout and stderr go to a file: a pipe nobody reads would block the server
    scheme: str = "http"
    data_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited early with {self.process.returncode}:\n{self.output()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.health_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("server did not start listening")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str]:
        """Send ``sig``, wait, and return (exit code, everything it wrote)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.output()


def start_server(env: Mapping[str, str], *, wait: bool = True) -> ServerProcess:
    http_port, health_port = free_port(), free_port()
    full = {"THEMIS_HTTP_PORT": str(http_port), "THEMIS_HEALTH_PORT": str(health_port), **env}
    log = Path(tempfile.mkdtemp(prefix="themis-server-")) / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "themisdb", "serve"],
            env=base_process_env(full),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(
        process,
        int(full["THEMIS_HTTP_PORT"]),
        int(full["THEMIS_HEALTH_PORT"]),
        log,
        "https" if "THEMIS_PKI_CERTIFICATE" in full else "http",
        Path(full["THEMIS_DATA_DIR"]) if "THEMIS_DATA_DIR" in full else None,
    )
    if wait:
        try:
            server.wait_ready()
        except Exception:
            server.stop(signal.SIGKILL)
            raise
    return server


def metric_value(internal_url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, parsed with prometheus-client's own parser."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{internal_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def security_events(server: ServerProcess, event: str) -> float:
    return metric_value(server.internal_url, "themisdb_security_events_total", event=event)
