"""Mutual TLS for replication: the listener's TLS front and the follower's credentials.

Why a front instead of gRPC's own TLS: grpcio reports a failed handshake to nobody but its C
core's log, and the specification wants every refused peer to be a security and audit event.
So the replication listener terminates TLS itself, with Python's ssl and the same profile as
the API (TLS 1.3 only here: both ends are ThemisDB), checks the peer's certificate identity,
and only then relays the bytes to the gRPC server on a unix socket in a private directory.
A peer that fails the handshake or is not an allowed identity never reaches gRPC.

The front tells gRPC who is calling: it connects to gRPC from a unix socket bound to a path of
its own per connection (gRPC reports it as the call's ``peer()``), and the ``PeerBook`` maps
that path to the names the peer's certificate proves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from themisdb.errors import ConfigError
from themisdb.settings import Settings
from themisdb.tls import profile_context

_log = logging.getLogger("themisdb.replication")

HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Refusal:
    """A peer refused at the TLS front: why (a fixed word), from where, and the detail."""

    event: str  # "handshake_failure" | "peer_not_allowed" | "too_many_connections"
    peer: str
    detail: str


def _read(path: str | None, variable: str) -> bytes:
    if not path:
        raise ConfigError(f"{variable} is not set: mutual TLS for replication needs it")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: cannot read it ({exc.strerror})") from exc


@dataclass(frozen=True)
class Material:
    """This node's replication certificate, key and CA, read and checked once at startup."""

    certificate: bytes
    private_key: bytes
    ca: bytes
    certificate_path: str
    private_key_path: str

    @classmethod
    def load(cls, settings: Settings) -> Material:
        """Read the three files; raise ConfigError naming the variable of each problem: a
        missing or unreadable file, an encrypted key, a key that does not match, or a
        certificate that the replication CA did not issue."""
        cert = _read(settings.wal_grpc_cert_path, "THEMIS_WAL_GRPC_CERT_PATH")
        key = _read(settings.wal_grpc_key_path, "THEMIS_WAL_GRPC_KEY_PATH")
        ca = _read(settings.wal_grpc_ca_cert_path, "THEMIS_WAL_GRPC_CA_CERT_PATH")
        problems: list[str] = []
        try:
            leaf = x509.load_pem_x509_certificates(cert)[0]
        except ValueError:
            raise ConfigError("THEMIS_WAL_GRPC_CERT_PATH: not a PEM certificate") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except TypeError:
            problems.append("THEMIS_WAL_GRPC_KEY_PATH: the key is encrypted; gRPC needs it plain")
        except ValueError:
            problems.append("THEMIS_WAL_GRPC_KEY_PATH: not a PEM private key")
        else:
            if private.public_key() != leaf.public_key():
                problems.append("THEMIS_WAL_GRPC_KEY_PATH does not match the certificate")
        try:
            authorities = x509.load_pem_x509_certificates(ca)
        except ValueError:
            raise ConfigError("THEMIS_WAL_GRPC_CA_CERT_PATH: not a PEM certificate") from None
        if not any(_issued_by(leaf, authority) for authority in authorities):
            problems.append(
                "THEMIS_WAL_GRPC_CERT_PATH was not issued by THEMIS_WAL_GRPC_CA_CERT_PATH"
            )
        if problems:
            raise ConfigError(problems)
        assert settings.wal_grpc_cert_path
        assert settings.wal_grpc_key_path
        return cls(cert, key, ca, settings.wal_grpc_cert_path, settings.wal_grpc_key_path)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The follower side: verify the leader against the CA, present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.private_key,
            certificate_chain=self.certificate,
        )

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """The listener side: the specification's profile, TLS 1.3 only, HTTP/2 by ALPN."""
        ctx = profile_context(ssl.TLSVersion.TLSv1_3)
        ctx.set_alpn_protocols(["h2"])
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        try:
            ctx.load_verify_locations(cadata=self.ca.decode("ascii"))
            ctx.load_cert_chain(self.certificate_path, self.private_key_path)
        except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
            raise ConfigError(
                "THEMIS_WAL_GRPC_CERT_PATH / THEMIS_WAL_GRPC_KEY_PATH / "
                "THEMIS_WAL_GRPC_CA_CERT_PATH: OpenSSL cannot use them"
            ) from exc
        return ctx


def _issued_by(leaf: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def certificate_names(pem: bytes) -> set[str]:
    """The names this node's own certificate proves (CN, SAN DNS names and addresses)."""
    leaf = x509.load_pem_x509_certificates(pem)[0]
    names = {str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.update(san.get_values_for_type(x509.DNSName))
    names.update(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return names


def identities(cert: dict[str, object]) -> set[str]:
    """The names a peer certificate (``getpeercert()``) proves: its CN and SAN entries."""
    names: set[str] = set()
    for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for _kind, value in cert.get("subjectAltName", ()):  # type: ignore[attr-defined]
        names.add(str(value))
    return names


class PeerBook:
    """Which certificate names each relayed connection proved, keyed by the path of its
    upstream unix socket (what ``ServicerContext.peer()`` shows as ``unix:<path>``)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._names: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._next = 0

    def open(self, names: set[str]) -> str:
        with self._lock:
            self._next += 1
            path = str(self._directory / f"peer-{self._next}")
            self._names[path] = frozenset(names)
        return path

    def close(self, path: str) -> None:
        with self._lock:
            self._names.pop(path, None)
        with contextlib.suppress(OSError):
            Path(path).unlink()

    def names(self, grpc_peer: str) -> frozenset[str] | None:
        """The names behind a gRPC ``peer()``; None for a caller that did not come through
        the front."""
        with self._lock:
            return self._names.get(grpc_peer.removeprefix("unix:"))


class TlsFront:
    """Accepts replication connections on ``sock``, completes the TLS handshake, checks the
    peer's identity and relays the connection to ``upstream`` (a unix socket path)."""

    def __init__(
        self,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        upstream: str,
        *,
        allowed: frozenset[str],
        on_refused: Callable[[Refusal], None],
        book: PeerBook,
    ) -> None:
        self._sock = sock
        self._ctx = ctx
        self._upstream = upstream
        self._allowed = allowed
        self._on_refused = on_refused
        self._book = book
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="themis-wal-tls", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._sock.setblocking(False)
        accepting = self._loop.create_task(self._accept())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            accepting.cancel()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _accept(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while True:
            conn, address = await self._loop.sock_accept(self._sock)
            peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
            if len(tasks) >= MAX_CONNECTIONS:
                conn.close()
                self._refuse("too_many_connections", peer, f"more than {MAX_CONNECTIONS} open")
                continue
            task = self._loop.create_task(self._serve(conn, peer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def _refuse(self, event: str, peer: str, detail: str) -> None:
        try:
            self._on_refused(Refusal(event, peer, detail))
        except Exception:
            _log.exception("replication refusal hook failed")

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        # The handshake is awaited here, so its failure reaches us (an ssl= server hides it).
        reader = asyncio.StreamReader(limit=_CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except ssl.SSLError as exc:
            conn.close()
            self._refuse("handshake_failure", peer, _reason(exc))
            return
        except (TimeoutError, OSError, EOFError) as exc:
            conn.close()
            self._refuse("handshake_failure", peer, type(exc).__name__)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
        try:
            await self._relay(reader, writer, peer)
        finally:
            writer.close()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        tls = writer.get_extra_info("ssl_object")
        cert = tls.getpeercert() if tls is not None else None
        names = identities(cert) if cert else set()
        if self._allowed and not names & self._allowed:
            shown = ", ".join(sorted(names)) or "no certificate"
            self._refuse("peer_not_allowed", peer, f"identity {shown} is not allowed")
            return
        path = self._book.open(names)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind(path)  # the path gRPC reports as this call's peer
            upstream.setblocking(False)
            await self._loop.sock_connect(upstream, self._upstream)
            up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream, limit=_CHUNK)
        except OSError:
            upstream.close()
            self._book.close(path)
            _log.error("replication: the local gRPC server is not reachable")
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            self._book.close(path)


def _reason(exc: ssl.SSLError) -> str:
    reason = exc.reason or type(exc).__name__
    if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"):
        return f"not TLS ({reason}): a plaintext client?"
    return str(reason)


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_CHUNK):
            target.write(data)
            await target.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if target.can_write_eof():
                target.write_eof()
            else:
                target.close()
