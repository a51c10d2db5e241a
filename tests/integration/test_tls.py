"""The API's TLS through the real server: the specification's profile scanned by sslyze, no
session tickets in any version, the bad-certificate matrix, hot reload, key log, client certs."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.helpers import (
    REPO,
    ServerProcess,
    hardened_env,
    metric_value,
    run_cli,
    security_events,
    start_server,
    write_cert,
)

pytestmark = pytest.mark.integration
SSLYZE = REPO / ".venv-tools" / "bin" / "python"
TLS12_EXPECTED = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
}
TLS13_EXPECTED = {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def _tls_server(tmp_path: Path, **extra: str) -> tuple[ServerProcess, Path, Path]:
    cert, key = write_cert(tmp_path, "api")
    server = start_server(
        {
            "THEMIS_PKI_CERTIFICATE": str(cert),
            "THEMIS_PKI_PRIVATE_KEY": str(key),
            "THEMIS_DATA_DIR": str(tmp_path / "data"),
            **extra,
        }
    )
    return server, cert, key


def _scan(port: int, tmp_path: Path) -> dict[str, object]:
    if not SSLYZE.exists():
        pytest.fail(
            "sslyze is missing: `make test` installs requirements-tools.lock into .venv-tools"
        )
    out = tmp_path / "scan.json"
    subprocess.run(
        [
            str(SSLYZE),
            "-m",
            "sslyze",
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--compression",
            "--resum",
            "--reneg",
            "--mozilla_config",
            "disable",
            "--json_out",
            str(out),
            f"localhost:{port}{{127.0.0.1}}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result: dict[str, object] = json.loads(out.read_text())["server_scan_results"][0]
    assert result["scan_status"] == "COMPLETED"
    scan: dict[str, object] = result["scan_result"]  # type: ignore[assignment]
    return scan


def _accepted(scan: dict[str, object], name: str) -> set[str]:
    entry = scan[name]
    assert isinstance(entry, dict)
    assert entry["status"] == "COMPLETED"
    return {c["cipher_suite"]["name"] for c in entry["result"]["accepted_cipher_suites"]}


def test_sslyze_sees_exactly_the_specified_profile(tmp_path: Path) -> None:
    server, _, _ = _tls_server(tmp_path)
    try:
        scan = _scan(server.http_port, tmp_path)
    finally:
        server.stop()
    for old in (
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ):
        assert _accepted(scan, old) == set(), old
    assert _accepted(scan, "tls_1_2_cipher_suites") == TLS12_EXPECTED
    assert _accepted(scan, "tls_1_3_cipher_suites") == TLS13_EXPECTED
    resumption = scan["session_resumption"]["result"]  # type: ignore[index]
    assert resumption["tls_ticket_successful_resumptions_count"] == 0
    assert resumption["session_id_successful_resumptions_count"] == 0
    assert scan["tls_compression"]["result"]["supports_compression"] is False  # type: ignore[index]
    reneg = scan["session_renegotiation"]["result"]  # type: ignore[index]
    assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False


def test_tls13_only_when_required(tmp_path: Path) -> None:
    server, _, _ = _tls_server(tmp_path, THEMIS_TLS_MIN_VERSION="1.3")
    try:
        scan = _scan(server.http_port, tmp_path)
    finally:
        server.stop()
    assert _accepted(scan, "tls_1_2_cipher_suites") == set()
    assert _accepted(scan, "tls_1_3_cipher_suites") == TLS13_EXPECTED


def _client(ca: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = context.maximum_version = version
    return context


def _handshake(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10),
        server_hostname="localhost",
        session=session,
    )
    # Tickets of TLS 1.3 come after the handshake, with the first data: read a response.
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    while sock.recv(65536):
        pass
    return sock


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_no_session_ticket_and_no_resumption(tmp_path: Path, version: ssl.TLSVersion) -> None:
    server, cert, _ = _tls_server(tmp_path)
    try:
        context = _client(cert, version)
        first = _handshake(server.http_port, context)
        session = first.session
        assert first.version() == {"TLSv1_3": "TLSv1.3", "TLSv1_2": "TLSv1.2"}[version.name]
        assert session is not None
        assert not session.has_ticket  # the server sent no NewSessionTicket
        first.close()
        second = _handshake(server.http_port, context, session=session)
        assert not second.session_reused
        second.close()
    finally:
        server.stop()


def _days_ago(days: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=days)


# case: (write_cert options, the rule that refuses it, text the refusal shows)
BAD_CERTIFICATES: dict[str, tuple[dict[str, Any], str, str]] = {
    "rsa-2048": ({"key": "rsa-2048"}, "tls.certificate_key_strength", "RSA-2048"),
    "400-days": ({"days": 400}, "tls.certificate_validity", "at most 397"),
    "expired": ({"days": 30, "not_before": _days_ago(60)}, "tls.certificate_validity", "expired"),
    "wrong-san": ({"hostnames": ("other.example",)}, "tls.san_matches_hostname", "no SAN"),
}


@pytest.mark.parametrize("case", [*BAD_CERTIFICATES, "mismatch", "wrong-passphrase", "mode-0644"])
def test_production_refuses_bad_certificates(
    hsm_env: dict[str, str], tmp_path: Path, case: str
) -> None:
    env = hardened_env(tmp_path, hsm_env)
    if case in BAD_CERTIFICATES:
        options, rule, text = BAD_CERTIFICATES[case]
        cert, key = write_cert(tmp_path, case, **options)
        env.update({"THEMIS_PKI_CERTIFICATE": str(cert), "THEMIS_PKI_PRIVATE_KEY": str(key)})
    elif case == "mismatch":
        rule, text = "tls.certificate_configured", "does not belong"
        env["THEMIS_PKI_PRIVATE_KEY"] = str(write_cert(tmp_path, "other")[1])
    elif case == "wrong-passphrase":
        rule, text = "tls.certificate_configured", "wrong passphrase"
        cert, key = write_cert(tmp_path, "locked", passphrase=b"the-right-one")
        env.update(
            {
                "THEMIS_PKI_CERTIFICATE": str(cert),
                "THEMIS_PKI_PRIVATE_KEY": str(key),
                "THEMIS_PKI_KEY_PASSPHRASE": "not-the-right-one",
            }
        )
    else:
        rule, text = "tls.key_file_private", "0644"
        Path(env["THEMIS_PKI_PRIVATE_KEY"]).chmod(0o644)
    result = run_cli(["serve"], env)
    assert result.returncode == 78, result.stderr
    assert f"x {rule}:" in result.stderr
    assert text in result.stderr
    assert "not-the-right-one" not in result.stderr


def _served_serial(port: int) -> int:
    # We look at which certificate is served, not at whether to trust it: no verification.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _wait_for_serial(port: int, serial: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _served_serial(port) == serial:
            return True
        time.sleep(0.2)
    return False


def _replace(directory: Path, name: str, cert: Path, key: Path, **options: object) -> Path:
    """Write a new pair next to the served one and move it into place (as certbot does)."""
    new_cert, new_key = write_cert(directory, name, **options)  # type: ignore[arg-type]
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    return cert


def test_hot_reload_serves_a_good_pair_and_keeps_the_old_on_a_bad_one(tmp_path: Path) -> None:
    server, cert, key = _tls_server(tmp_path)
    try:
        original = _served_serial(server.http_port)
        assert original == _serial_of(cert)
        _replace(tmp_path, "second", cert, key)
        assert _wait_for_serial(server.http_port, _serial_of(cert))  # no restart
        good = _serial_of(cert)
        # A broken pair: this certificate with another key.
        broken_cert, _ = write_cert(tmp_path, "broken")
        os.replace(broken_cert, cert)
        time.sleep(4)  # two watcher rounds
        assert _served_serial(server.http_port) == good
        assert "NOT reloaded" in server.output()
        # SIGHUP reloads at once.
        _replace(tmp_path, "third", cert, key)
        server.process.send_signal(signal.SIGHUP)
        assert _wait_for_serial(server.http_port, _serial_of(cert), timeout=5)
        # The expiry metric follows the served certificate.
        not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        left = (not_after - dt.datetime.now(dt.UTC)).total_seconds()
        served = metric_value(server.internal_url, "themisdb_tls_certificate_expiry_seconds")
        assert abs(served - left) < 120
        reloads = metric_value(server.internal_url, "themisdb_tls_reloads_total", result="rejected")
        assert reloads >= 1  # the broken pair
    finally:
        code, _ = server.stop()
    assert code == 0


def test_debug_pki_writes_a_key_log_in_development(tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    server, cert, _ = _tls_server(tmp_path, THEMIS_DEBUG_PKI=str(keylog))
    try:
        _handshake(server.http_port, _client(cert, ssl.TLSVersion.TLSv1_3)).close()
    finally:
        server.stop()
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in keylog.read_text()


def _get_root(context: ssl.SSLContext, port: int) -> bytes:
    """The first bytes of the answer to GET /, or b"" when the server refused the handshake
    (with TLS 1.3 the refusal of a missing client certificate arrives after the client's side
    of the handshake, as an alert on the first read)."""
    try:
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        ) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(100)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_client_certificates_when_a_client_ca_is_set(tmp_path: Path) -> None:
    client_cert, client_key = write_cert(tmp_path, "client", hostnames=("client",))
    server, cert, _ = _tls_server(tmp_path, THEMIS_TLS_CLIENT_CA=str(client_cert))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        assert _get_root(context, server.http_port) == b""
        context.load_cert_chain(str(client_cert), str(client_key))
        assert _get_root(context, server.http_port).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()


def test_handshake_failures_are_security_events(tmp_path: Path) -> None:
    server, cert, _ = _tls_server(tmp_path)
    try:
        assert security_events(server, "tls_handshake_failure") == 0
        strangers = ssl.create_default_context()  # does not trust our certificate
        assert _get_root(strangers, server.http_port) == b""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(cert))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES256-SHA")  # CBC: refused by the server
        assert _get_root(context, server.http_port) == b""
        deadline = time.monotonic() + 10
        while security_events(server, "tls_handshake_failure") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert security_events(server, "tls_handshake_failure") >= 2
        ok = _client(cert, ssl.TLSVersion.TLSv1_3)
        assert _get_root(ok, server.http_port).startswith(b"HTTP/1.1")
    finally:
        server.stop()
