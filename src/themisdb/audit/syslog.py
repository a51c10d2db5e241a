"""The syslog audit sink: RFC 5424 messages over tcp, tls or udp.

Each audit record becomes one RFC 5424 message::

    <PRI>1 TIMESTAMP HOSTNAME themisdb PROCID MSGID [themisdb@32473 category=".." outcome=".."
    seq=".." kind=".."] MSG

facility 13 (log audit); severity 5 (notice) for the outcomes success/granted and for
checkpoints, 4 (warning) for every other outcome; MSGID the event's category or
``checkpoint``; TIMESTAMP the record's own ``time``; MSG the record's canonical JSON ``line``,
byte for byte (what is hashed and signed, so a consumer can verify it straight from syslog).

MSG carries no BOM, on purpose. RFC 5424 (6.4) wants UTF-8 text sent as MSG-UTF8, BOM first;
MSG-ANY goes without one. rsyslog keeps a BOM as part of ``%msg%`` (measured with 8.2302),
so with one every consumer's JSON parser (mmjsonparse, SIEM JSON extraction, ``json.loads``)
would choke on the first three bytes, and a verifier would have to strip bytes that were never
signed. JSON is UTF-8 by definition (RFC 8259), so nothing is ambiguous for a JSON consumer;
an ASCII-only line would be plain MSG-ANY, but the chain's canonical JSON keeps non-ASCII
characters, so such lines are UTF-8 MSG without the BOM the RFC asks for.

Transports: ``tcp`` with octet-counting framing (RFC 6587 ``LEN SP MSG``), ``tls`` with the
same framing over TLS >= 1.2 that verifies the server certificate and its name (RFC 5425),
``udp`` with one datagram per message (RFC 5426); a message that does not fit a datagram
raises SinkError instead of being truncated. UDP cannot know whether anything arrived: choose
tcp or tls where records must not be lost.

Loss on tcp/tls: a send succeeds as soon as the kernel buffers it, also into a connection
whose peer has died, and a restarting server drops what it had received but not processed.
So before each send the connection is checked for EOF or an error (a non-blocking read) and
replaced when the peer is gone, and the sink keeps a window of what it sent recently (the last
``WINDOW_RECORDS`` records, and anything sent within ``WINDOW_SECONDS``, at most
``WINDOW_BYTES``) which it sends again, in order, right after every new connection. Consumers
see duplicates and deduplicate by ``seq``; the broker spools and replays what ``write``
refused. Plain syslog has no acknowledgements: this closes the gaps of a restart or a crash
of the server, not of a server that accepted records and then lost more than the window.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable

from themisdb.audit._sink import AuditRecord, SinkError
from themisdb.settings import SyslogOutput

FACILITY_LOG_AUDIT = 13
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
APP_NAME = "themisdb"
# 32473 is the example Private Enterprise Number of RFC 5612 (the one RFC 5424 uses too).
SD_ID = "themisdb@32473"
SUCCESS_OUTCOMES = frozenset({"success", "granted"})

CONNECT_TIMEOUT = 3.0  # seconds: a write on a dead server fails fast; the broker retries
SEND_TIMEOUT = 10.0  # seconds a server may refuse to take data before it counts as failed
WINDOW_RECORDS = 1000
WINDOW_SECONDS = 10.0
# Enough for what can sit unread in kernel buffers on both ends at Linux's default maxima.
WINDOW_BYTES = 32 * 1024 * 1024
UDP_MAX_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}  # 65535 - IP/UDP headers

_NIL = "-"
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII
)
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: 1..limit printable US-ASCII characters, or NILVALUE."""
    cleaned = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or _NIL


def escape_param_value(value: str) -> str:
    """PARAM-VALUE escaping of RFC 5424 6.3.3: backslash, double quote and ] get a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _timestamp(value: object) -> str:
    """The record's own time when it is an RFC 5424 TIMESTAMP (RFC 3339, at most 6 fraction
    digits), else NILVALUE: the JSON line carries the time either way."""
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        return value
    return _NIL


def format_message(record: AuditRecord, *, hostname: str, procid: str) -> bytes:
    """The RFC 5424 message for ``record`` (no framing)."""
    fields = record.fields
    params: list[tuple[str, object]]
    if record.kind == "checkpoint":
        severity, msgid = SEVERITY_NOTICE, "checkpoint"
        params = [("seq", record.seq), ("kind", record.kind)]
    else:
        category, outcome = fields.get("category"), fields.get("outcome")
        severity = SEVERITY_NOTICE if outcome in SUCCESS_OUTCOMES else SEVERITY_WARNING
        msgid = _header_field(str(category), 32) if category is not None else _NIL
        params = [
            ("category", category),
            ("outcome", outcome),
            ("seq", record.seq),
            ("kind", record.kind),
        ]
    data = "".join(
        f' {name}="{escape_param_value(str(value))}"' for name, value in params if value is not None
    )
    header = (
        f"<{FACILITY_LOG_AUDIT * 8 + severity}>1 {_timestamp(fields.get('time'))} "
        f"{hostname} {APP_NAME} {procid} {msgid} [{SD_ID}{data}] "
    )
    return (header + record.line).encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing (RFC 5425 uses the same): ``LEN SP MSG``."""
    return b"%d %s" % (len(message), message)


def _describe(exc: BaseException) -> str:
    """What went wrong, from the exception's kind and the OS's or OpenSSL's reason only."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"server certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or type(exc).__name__}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class SyslogSink:
    """An audit sink that sends RFC 5424 messages to a syslog server or SIEM.

    Thread-safe: messages are formatted outside and sent under one lock, so concurrent writes
    never interleave inside a frame. Errors name the sink (``syslog:tcp://host:port``) and the
    reason, never a record's contents. ``write_many`` is the broker's optional batch
    capability."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        protocol: str,
        display: str,
        ca_file: str | None = None,
        server_name: str | None = None,
        hostname: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        window_records: int = WINDOW_RECORDS,
        window_seconds: float = WINDOW_SECONDS,
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        if protocol not in ("tcp", "udp", "tls"):
            raise ValueError(f"unknown syslog protocol {protocol!r}")
        self.name = f"syslog:{protocol}://{display}"
        self._host, self._port, self._protocol = host, port, protocol
        self._hostname = _header_field(hostname or socket.gethostname(), 255)
        self._connect_timeout, self._send_timeout = connect_timeout, send_timeout
        self._window_records, self._window_seconds = window_records, window_seconds
        self._window_bytes = window_bytes
        self._server_name = server_name or host
        self._tls = self._tls_context(ca_file) if protocol == "tls" else None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._udp_limit = UDP_MAX_PAYLOAD[socket.AF_INET]
        self._window: collections.deque[tuple[float, bytes]] = collections.deque()
        self._window_size = 0
        self._closed = False

    @classmethod
    def from_output(cls, output: SyslogOutput, *, hostname: str | None = None) -> SyslogSink:
        """The sink of one ``type: syslog`` output. ``hostname``: the HOSTNAME field of every
        message (default: this machine's name)."""
        host, port = output.address
        return cls(
            host=host,
            port=port,
            protocol=output.protocol,
            display=output.server,
            ca_file=output.ca_file,
            server_name=output.server_name,
            hostname=hostname,
        )

    def __repr__(self) -> str:
        return f"SyslogSink({self.name!r})"

    # --- the Sink protocol ---------------------------------------------------------------

    def write(self, record: AuditRecord) -> None:
        self.write_many([record])

    def write_many(self, records: list[AuditRecord]) -> None:
        """Deliver ``records`` in order (on tcp/tls in one send), or raise SinkError; the
        broker then spools the whole batch again (consumers deduplicate by seq)."""
        procid = str(os.getpid())
        messages = [format_message(r, hostname=self._hostname, procid=procid) for r in records]
        with self._lock:
            self._check_open()
            if self._protocol == "udp":
                for record, message in zip(records, messages, strict=True):
                    self._send_datagram(message, record.seq)
            else:
                self._send_frames([octet_counted(message) for message in messages])

    def test_write(self) -> None:
        """Connect (for tls: complete the handshake) or raise SinkError. Nothing is sent: a
        made-up audit record would be a false entry in the SIEM."""
        with self._lock:
            self._check_open()
            if self._sock is not None and self._peer_closed(self._sock):
                self._drop()
            if self._sock is None:
                self._reconnect()

    def reopen(self) -> None:
        """Close the connection and open a new one (tcp/tls: then send the window again);
        SinkError when the server cannot be reached (the next write tries again)."""
        with self._lock:
            self._check_open()
            self._drop()
            self._reconnect()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
            self._window.clear()
            self._window_size = 0
        if sock is not None:
            _close_gracefully(sock, self._connect_timeout)

    # --- connections ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"{self.name}: the sink is closed")

    def _tls_context(self, ca_file: str | None) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"{self.name}: cannot load ca_file {ca_file} ({_describe(exc)})"
            ) from exc
        # create_default_context already verifies the chain and the name; pin the rest.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # TLS 1.2: forward secrecy, AEAD
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    def _reconnect(self) -> None:
        """A new connection; on a stream, the window goes first. SinkError when it fails."""
        if self._protocol == "udp":
            self._sock = self._open_udp()
            return
        sock = self._open_stream()
        if self._window:
            try:
                sock.sendall(b"".join(frame for _, frame in self._window))
            except OSError as exc:
                sock.close()
                raise SinkError(
                    f"{self.name}: sending the recent records again failed ({_describe(exc)})"
                ) from exc
        self._sock = sock

    def _open_stream(self) -> socket.socket:
        try:
            raw = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot connect ({_describe(exc)})") from exc
        try:
            _tune_tcp(raw, self._window_seconds)
            sock = raw
            if self._tls is not None:
                sock = self._tls.wrap_socket(raw, server_hostname=self._server_name)
        except OSError as exc:
            raw.close()
            step = "TLS handshake failed" if self._tls is not None else "cannot set up"
            raise SinkError(f"{self.name}: {step} ({_describe(exc)})") from exc
        sock.settimeout(self._send_timeout)
        return sock

    def _open_udp(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot resolve or open ({_describe(exc)})") from exc
        try:
            # Connected: the kernel reports an ICMP "port unreachable" on a later send.
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise SinkError(f"{self.name}: cannot connect ({_describe(exc)})") from exc
        sock.settimeout(self._send_timeout)
        self._udp_limit = UDP_MAX_PAYLOAD.get(family, UDP_MAX_PAYLOAD[socket.AF_INET])
        return sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # no close_notify: the connection is broken or being replaced

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Whether the server has closed or reset the connection: a non-blocking read sees
        EOF or an error. A syslog server sends nothing, so whatever is read (TLS 1.3 session
        tickets, say) is discarded; a MSG_PEEK would see such bytes forever and never reach
        the EOF behind them, and cannot be used on a TLS socket."""
        sock.settimeout(0.0)
        try:
            while True:
                if not sock.recv(4096):
                    return True
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(self._send_timeout)

    # --- sending -------------------------------------------------------------------------

    def _send_frames(self, frames: list[bytes]) -> None:
        data = b"".join(frames)
        fresh = False
        if self._sock is not None and self._peer_closed(self._sock):
            self._drop()
        if self._sock is None:
            self._reconnect()
            fresh = True
        try:
            self._sendall(data)
        except OSError as exc:
            self._drop()
            if fresh or isinstance(exc, TimeoutError):
                raise SinkError(f"{self.name}: send failed ({_describe(exc)})") from exc
            # A connection that looked healthy broke under this send (the server restarted
            # between the check and the send): one new connection, window first.
            self._reconnect()
            try:
                self._sendall(data)
            except OSError as again:
                self._drop()
                raise SinkError(f"{self.name}: send failed ({_describe(again)})") from again
        self._remember(frames)

    def _sendall(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def _remember(self, frames: list[bytes]) -> None:
        now = time.monotonic()
        for frame in frames:
            self._window.append((now, frame))
            self._window_size += len(frame)
        window = self._window
        while window and (
            self._window_size > self._window_bytes
            or (len(window) > self._window_records and now - window[0][0] > self._window_seconds)
        ):
            _, dropped = window.popleft()
            self._window_size -= len(dropped)

    def _send_datagram(self, message: bytes, seq: int) -> None:
        if self._sock is None:
            self._reconnect()
        assert self._sock is not None
        if len(message) > self._udp_limit:
            raise SinkError(
                f"{self.name}: record seq {seq} is {len(message)} bytes as a syslog message, "
                f"more than one UDP datagram holds ({self._udp_limit}); use protocol tcp or tls"
            )
        try:
            self._sock.send(message)
        except OSError as exc:
            # ECONNREFUSED here reports an ICMP "port unreachable" for an earlier datagram:
            # nobody listens. The socket stays usable.
            raise SinkError(f"{self.name}: send failed ({_describe(exc)})") from exc


def _tune_tcp(sock: socket.socket, window_seconds: float) -> None:
    """Keepalive finds a dead peer on an idle connection; TCP_USER_TIMEOUT fails a connection
    whose data stays unacknowledged for longer than the resend window covers."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options: Iterable[tuple[str, int]] = (
        ("TCP_KEEPIDLE", 30),
        ("TCP_KEEPINTVL", 10),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(window_seconds * 1000)),
    )
    for name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _close_gracefully(sock: socket.socket, timeout: float) -> None:
    """Close a healthy connection: TLS close_notify (bounded by ``timeout``), then close."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(timeout)
            sock.unwrap()
    except (OSError, ValueError):
        pass
    finally:
        sock.close()
