"""A real rsyslog for the syslog audit sink's tests: tcp, udp and tls listeners on loopback.

The session fixture ``rsyslog`` runs Debian's ``rsyslogd -n -f CONF -i PIDFILE`` unprivileged
with its own configuration in a temporary directory (``global(workDirectory=...)``, no system
log sockets: no imuxsock, no imklog), listening on free 127.0.0.1 ports:

* ``tcp_port``: imptcp, octet-counted framing (RFC 6587) accepted by default;
* ``udp_port``: imudp, one message per datagram (RFC 5426);
* ``tls_port``: imtcp with the gnutls netstream driver (RFC 5425), anonymous clients, a server
  certificate for ``localhost`` and ``127.0.0.1`` issued by a test CA (``ca_file``), rsyslog's
  default TLS priorities (which negotiate TLS 1.2 with rsyslog 8.2302 / GnuTLS 3.7);
* ``tls13_port``: the same with TLS 1.3 enabled (post-handshake session tickets included).

Everything received goes, one JSON object per line, to ``output`` through a template that
shows what rsyslog's own RFC 5424 parser made of each message: ``app_name``, ``msgid``,
``structured_data`` (the SD text as received), ``sd`` (the same parsed and unescaped by
rsyslog's mmpstrucdata: ``{sd_id: {param: value}}``), ``msg`` (MSG as rsyslog keeps it: a
BOM would still be there), ``hostname``, ``procid``, ``pri``/``facility``/``severity``,
``timestamp`` (TIMESTAMP as sent, RFC 3339) and ``input`` (which listener: ``tcp``, ``udp``,
``tls`` or ``tls13``). The session shares one daemon and one output file, so a test tells its
records apart by a HOSTNAME of its own.

``stop()`` and ``start()`` end the daemon by pid and start it again on the same ports and
output file (an outage). Debian packages rsyslog and rsyslog-gnutls must be installed;
``make test`` installs them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import free_port

DEB_PACKAGES = ("rsyslog", "rsyslog-gnutls")
GTLS_DRIVER = "lmnsd_gtls.so"
TLS13_PRIORITIES = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
READY_MSGID = "fixture-ready"  # probes sent by the fixture; never written to ``output``
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0

Record = dict[str, Any]

_TEMPLATE_FIELDS = (
    # (output key, rsyslog property, extra property options)
    ("input", "inputname", ""),
    ("hostname", "hostname", ""),
    ("app_name", "app-name", ""),
    ("procid", "procid", ""),
    ("msgid", "msgid", ""),
    ("structured_data", "structured-data", ""),
    ("sd", "$!rfc5424-sd", ""),
    ("msg", "msg", ""),
    ("pri", "pri", ""),
    ("facility", "syslogfacility", ""),
    ("severity", "syslogseverity", ""),
    ("timestamp", "timereported", ' dateFormat="rfc3339"'),
    ("protocol_version", "protocol-version", ""),
)


# --- certificates --------------------------------------------------------------------------


def _write_pem(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def write_ca(directory: Path, name: str, *, days: int = 2) -> tuple[Path, Path]:
    """A self-signed test CA (EC P-256) as PEM files: (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ThemisDB test CA {name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pem(directory, name, cert, key)


def write_server_cert(
    directory: Path,
    name: str,
    ca: tuple[Path, Path],
    *,
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
    days: int = 2,
) -> tuple[Path, Path]:
    """A TLS server certificate (EC P-256) for ``hostnames`` issued by the CA ``ca``."""
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write_pem(directory, name, cert, key)


# --- configuration -------------------------------------------------------------------------


def _quote(value: str | Path) -> str:
    """A RainerScript string literal (paths here are ours: no quotes, but be exact anyway)."""
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _template() -> str:
    lines = [
        f'    property(outname="{key}" name="{prop}" format="jsonf"{extra})'
        for key, prop, extra in _TEMPLATE_FIELDS
    ]
    return 'template(name="received" type="list" option.jsonf="on") {\n' + "\n".join(lines) + "\n}"


def render_config(
    workdir: Path,
    *,
    output: Path,
    ready_file: Path,
    tcp_port: int,
    udp_port: int,
    tls_port: int,
    tls13_port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
) -> str:
    """The daemon's whole configuration: three loopback listeners, one output file."""
    return f"""\
# ThemisDB test rsyslog: no system sockets (no imuxsock, no imklog), loopback only.
global(
    workDirectory={_quote(workdir)}
    maxMessageSize="256k"
    defaultNetstreamDriverCAFile={_quote(ca_file)}
    defaultNetstreamDriverCertFile={_quote(cert_file)}
    defaultNetstreamDriverKeyFile={_quote(key_file)}
)
module(load="imptcp")
module(load="imudp")
module(load="mmpstrucdata")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="anon")

{_template()}

ruleset(name="received") {{
    if $msgid == "{READY_MSGID}" then {{
        action(type="omfile" file={_quote(ready_file)} template="received")
        stop
    }}
    action(type="mmpstrucdata")
    action(type="omfile" file={_quote(output)} template="received")
}}

input(type="imptcp" address="127.0.0.1" port="{tcp_port}" name="tcp" ruleset="received")
input(type="imudp" address="127.0.0.1" port="{udp_port}" name="udp" ruleset="received")
input(type="imtcp" address="127.0.0.1" port="{tls_port}" name="tls" ruleset="received")
input(type="imtcp" address="127.0.0.1" port="{tls13_port}" name="tls13" ruleset="received"
      gnutlsPriorityString="{TLS13_PRIORITIES}")
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_lines(text: str) -> list[Record]:
    """The complete lines of the output file (a line still being written is left out), with
    ``sd`` turned from mmpstrucdata's JSON text into a dict (empty without structured data)."""
    complete = text[: text.rfind("\n") + 1]
    records = [json.loads(line) for line in complete.splitlines() if line.strip()]
    for record in records:
        sd = record.get("sd")
        record["sd"] = json.loads(sd) if isinstance(sd, str) and sd else {}
    return records


# --- the daemon ----------------------------------------------------------------------------


@dataclass
class Rsyslog:
    """One rsyslogd with tcp, udp, tls and tls13 listeners on 127.0.0.1, restartable in
    place."""

    binary: Path
    workdir: Path
    tcp_port: int
    udp_port: int
    tls_port: int
    tls13_port: int
    ca_file: Path
    output: Path
    conf: Path
    pidfile: Path
    ready_file: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- what arrived ----------------------------------------------------------------------

    def records(self) -> list[Record]:
        """Every message received so far, parsed (one dict per message, in arrival order)."""
        try:
            text = self.output.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return parse_lines(text)

    def wait_for(
        self, predicate: Callable[[list[Record]], bool], timeout: float = 10.0
    ) -> list[Record]:
        """Poll ``records()`` until ``predicate`` holds for them; return them. TimeoutError
        (with how many records there were) when it does not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if predicate(records):
                return records
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"rsyslog: condition not met within {timeout}s "
                    f"({len(records)} records in {self.output})"
                )
            time.sleep(0.05)

    # --- lifecycle -------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start the daemon (again) on the same ports and output file; return once all four
        listeners take messages."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                cwd=self.workdir,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.workdir)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        """End the daemon by its pid (SIGTERM, then SIGKILL) and wait until it is gone."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill()

    def _kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT)

    def _wait_ready(self) -> None:
        """Ready when the stream listeners accept and a UDP probe went through the whole
        pipeline into ``ready_file`` (imudp gives no other sign of having bound)."""
        deadline = time.monotonic() + _START_TIMEOUT
        seen = len(self._ready_records())
        probe = (
            f"<110>1 - fixture-probe rsyslog-fixture - {READY_MSGID} - ready {time.time_ns()}"
        ).encode()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.process.returncode}:\n{self.log()}")
            if (
                self._accepts(self.tcp_port)
                and self.tls_version(self.tls_port)
                and self.tls_version(self.tls13_port)
            ):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.sendto(probe, ("127.0.0.1", self.udp_port))
                if len(self._ready_records()) > seen:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"rsyslogd did not become ready:\n{self.log()}")

    def _ready_records(self) -> list[Record]:
        try:
            return parse_lines(self.ready_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def tls_version(self, port: int) -> str | None:
        """The TLS version a handshake with the listener on ``port`` negotiates (verifying
        against ``ca_file``), None when there is no handshake. Also the readiness check: a
        bare connect would not show that the certificate is served."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                version = tls.version()
                with contextlib.suppress(OSError):  # rsyslog closes without a close_notify
                    tls.unwrap()
                return version
        except OSError:
            return None


def rsyslogd_binary() -> Path | None:
    found = shutil.which("rsyslogd", path="/usr/sbin:/usr/bin:/sbin:/bin")
    return Path(found) if found else None


def _gtls_installed() -> bool:
    """rsyslog-gnutls installs the gnutls netstream driver next to rsyslog's other modules."""
    candidates = [*Path("/usr/lib").glob(f"*/rsyslog/{GTLS_DRIVER}")]
    candidates += [Path("/usr/lib/rsyslog") / GTLS_DRIVER, Path("/usr/lib64/rsyslog") / GTLS_DRIVER]
    return any(path.is_file() for path in candidates)


def _missing_packages_message(what: str) -> str:
    return (
        f"{what}: the syslog audit sink is tested against a real rsyslog. `make test` installs "
        f"the Debian packages {' and '.join(DEB_PACKAGES)}; by hand: "
        f"apt-get install -y {' '.join(DEB_PACKAGES)}"
    )


def _create(binary: Path, workdir: Path) -> Rsyslog:
    ca = write_ca(workdir, "ca")
    cert_file, key_file = write_server_cert(workdir, "server", ca)
    tcp_port, udp_port = free_port(), free_udp_port()
    tls_port, tls13_port = free_port(), free_port()
    output, ready_file = workdir / "received.jsonl", workdir / "ready.jsonl"
    conf = workdir / "rsyslog.conf"
    conf.write_text(
        render_config(
            workdir,
            output=output,
            ready_file=ready_file,
            tcp_port=tcp_port,
            udp_port=udp_port,
            tls_port=tls_port,
            tls13_port=tls13_port,
            ca_file=ca[0],
            cert_file=cert_file,
            key_file=key_file,
        )
    )
    return Rsyslog(
        binary=binary,
        workdir=workdir,
        tcp_port=tcp_port,
        udp_port=udp_port,
        tls_port=tls_port,
        tls13_port=tls13_port,
        ca_file=ca[0],
        output=output,
        conf=conf,
        pidfile=workdir / "rsyslogd.pid",
        ready_file=ready_file,
        log_path=workdir / "rsyslogd.log",
    )


@pytest.fixture(scope="session")
def rsyslog() -> Iterator[Rsyslog]:
    binary = rsyslogd_binary()
    if binary is None:
        pytest.fail(_missing_packages_message("rsyslogd is missing"), pytrace=False)
    if not _gtls_installed():
        pytest.fail(
            _missing_packages_message(f"rsyslog's TLS driver ({GTLS_DRIVER}) is missing"),
            pytrace=False,
        )
    with tempfile.TemporaryDirectory(prefix="themis-rsyslog-") as directory:
        root = Path(directory)
        os.chmod(root, 0o700)
        server: Rsyslog | None = None
        for attempt in range(3):  # a free port can be taken before rsyslogd binds it
            workdir = root / f"attempt-{attempt}"
            workdir.mkdir(mode=0o700)
            candidate = _create(binary, workdir)
            try:
                candidate.start()
            except (RuntimeError, TimeoutError):
                candidate.stop()
                if attempt == 2:
                    raise
                continue
            server = candidate
            break
        assert server is not None
        try:
            yield server
        finally:
            server.stop()
