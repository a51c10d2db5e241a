"""Run the public and the internal listener in one process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from themisdb.access import ApiKeyStore, Limits, Session, SessionStore
from themisdb.api.app import create_app, create_internal_app
from themisdb.api.auth import Authenticator
from themisdb.api.metrics import Metrics
from themisdb.api.routes import Services
from themisdb.audit import AuditBroker
from themisdb.audit.setup import build_broker
from themisdb.crypto import Envelope
from themisdb.database import SCHEMA_KEY, Database
from themisdb.errors import ThemisError
from themisdb.keys import open_provider
from themisdb.posture import Report
from themisdb.redaction import PiiRuntime, install_log_redaction
from themisdb.replication import NodeHooks, Pruner, Registry, ReplicationNode
from themisdb.settings import Settings
from themisdb.storage import LogRecord, Storage
from themisdb.tls import TlsReloader, server_context, watch_handshake_failures

_log = logging.getLogger("themisdb.server")


class ListenError(ThemisError):
    """A listener could not be bound (address in use, not permitted, unknown address)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # One handler for both listeners is installed by serve(); uvicorn's own would only
        # stop the server that installed it last.
        yield


def bind(host: str, port: int, what: str) -> socket.socket:
    """Bind before serving so that a busy port is a clear error, not a half-started server."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host,
            port,
            type=socket.SOCK_STREAM,
            proto=socket.IPPROTO_TCP,
            flags=socket.AI_PASSIVE,
        )[0]
        # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only then, and
        # without it every keep-alive response waits ~40 ms (Nagle meets delayed ACK).
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port} for the {what}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def _server(app: ASGIApp, tls: ssl.SSLContext | None = None) -> _Server:
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # ours logs route templates, never raw paths (routes may hold keys)
        server_header=False,
        date_header=False,
        lifespan="off",
        timeout_graceful_shutdown=15,  # in-flight requests get this long after SIGTERM
    )
    config.load()
    config.ssl = tls  # our own context (themisdb.tls), not uvicorn's defaults
    return _Server(config)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _serve(
    pairs: list[tuple[_Server, socket.socket]],
    early: list[int],
    on_hangup: Callable[[], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    if on_hangup is not None:
        # SIGHUP: an external tool rotated the logs; reopen them off the event loop.
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, on_hangup))

    def stop() -> None:
        _log.info("shutting down")
        for server, _ in pairs:
            server.should_exit = True

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    if early:  # a stop signal arrived while the listeners were being set up
        stop()
    await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in pairs))


class _HandshakeFailures:
    """Counts failed TLS handshakes (a security event each in the metrics) and writes them to
    the audit log as one aggregated event every few seconds, off the event loop: a flood of
    bad handshakes must not turn into a flood of fsyncs on the loop."""

    def __init__(self, metrics: Metrics, audit: AuditBroker | None, interval: float = 5) -> None:
        self.metrics = metrics
        self.audit = audit
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        if audit is not None:
            threading.Thread(
                target=self._flush, args=(interval,), daemon=True, name="themis-tls-failures"
            ).start()

    def record(self, direction: str) -> None:
        self.metrics.security_event("security", "tls_handshake_failure")
        side = "refused by us" if direction == "write" else "refused by the client"
        with self._lock:
            self._pending[side] = self._pending.get(side, 0) + 1

    def _flush(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            with self._lock:
                pending, self._pending = self._pending, {}
            if pending and self.audit is not None:
                self.audit.emit(
                    "security",
                    "tls.handshake_failure",
                    outcome="failure",
                    resource={"count": sum(pending.values()), **pending},
                )


def _tls_reloader(
    settings: Settings, tls: ssl.SSLContext | None, metrics: Metrics, audit: AuditBroker | None
) -> TlsReloader | None:
    if tls is None:
        return None

    def result(ok: bool, detail: str) -> None:
        metrics.tls_reloads.labels("success" if ok else "rejected").inc()
        if audit is not None:
            audit.emit(
                "administrative",
                "tls.reload",
                outcome="success" if ok else "failure",
                reason=None if ok else detail,
            )

    failures = _HandshakeFailures(metrics, audit)
    watch_handshake_failures(tls, failures.record)
    reloader = TlsReloader(settings, tls, on_result=result)
    metrics.watch_tls(reloader.expiry_seconds)
    reloader.start()
    return reloader


def _startup_events(audit: AuditBroker, report: Report, provider: str) -> None:
    audit.emit(
        "administrative",
        "server.start",
        outcome="success",
        resource={
            "mode": "production" if report.production else "development",
            "key_provider": provider,
        },
    )
    for finding in report.blocking:  # only possible in development: production refused
        audit.emit(
            "security",
            "posture.violation",
            outcome="warning",
            resource={"rule": finding.rule.id},
            reason=finding.outcome.detail,
        )


def _authenticator(
    settings: Settings, storage: Storage, audit: AuditBroker | None
) -> Authenticator:
    def timed_out(session: Session) -> None:
        if audit is not None:
            audit.emit(
                "authentication",
                "session.timeout",
                outcome="expired",
                actor=f"session:{session.id}",
                resource={"id": session.id, "owner": session.owner},
            )

    sessions = SessionStore(
        settings.session_idle_timeout, settings.session_lifetime, on_expired=timed_out
    )
    return Authenticator(settings, keys=ApiKeyStore(storage), sessions=sessions)


def _open_database(
    settings: Settings, storage: Storage, stack: contextlib.ExitStack, pii: PiiRuntime
) -> Database:
    # Development creates a missing master key on first start; production never does it
    # silently (`themisdb keys init`) and refuses to start without one.
    provider = open_provider(settings, create=not settings.production)
    stack.callback(provider.close)
    _log.info("key provider: %s, master key %s", provider.name, provider.current_key_id())
    envelope = Envelope(
        provider, storage, ttl=settings.dek_cache_ttl, debug_dir=settings.debug_enc_dir
    )
    database = Database(storage, envelope, pii)
    database.note_master_key()
    envelope.start_monitor()
    stack.callback(envelope.stop_monitor)
    return database


def _open_audit(
    settings: Settings, report: Report, metrics: Metrics, provider: str, stack: contextlib.ExitStack
) -> AuditBroker | None:
    audit = build_broker(
        settings, on_event=metrics.audit_events_inc, on_sink_failure=metrics.audit_sink_failed
    )
    if audit is None:
        return None
    metrics.watch_audit(audit)
    audit.start()
    stack.callback(audit.close)  # the final signed checkpoint
    stack.callback(audit.emit, "administrative", "server.stop", outcome="success")
    _startup_events(audit, report, provider)
    return audit


class _Late:
    """Parts built after the replication node that its hooks report to."""

    audit: AuditBroker | None = None
    database: Database | None = None


def _replication(
    settings: Settings, storage: Storage, metrics: Metrics, stack: contextlib.ExitStack
) -> tuple[ReplicationNode | None, _Late]:
    """The log pruner (every role) and, unless standalone, the replication node: built before
    anything else can write (a follower refuses client writes from the start) and before any
    listener (misconfigured mTLS refuses the start)."""
    late = _Late()
    registry = Registry(storage, settings.retention)
    pruner = Pruner(registry)
    pruner.start()
    stack.callback(pruner.stop)
    if settings.role == "standalone":
        return None, late

    def event(
        category: str, action: str, outcome: str, resource: dict[str, object], reason: str | None
    ) -> None:
        if late.audit is not None:
            late.audit.emit(category, action, outcome=outcome, resource=resource, reason=reason)

    def applied(records: list[LogRecord]) -> None:
        metrics.replication_applied_records(records)
        if late.database is not None and any(
            r.op == "set_meta" and r.pk == SCHEMA_KEY for r in records
        ):
            late.database.reload_schema()  # a follower serves the leader's schema

    def security(name: str) -> None:
        metrics.security_event("security", name)

    def reconnect() -> None:  # the counter exists once watch_replication ran, below
        metrics.replication_reconnects.inc()

    node = ReplicationNode(
        settings,
        storage,
        registry,
        NodeHooks(
            event=event,
            security=security,
            applied=applied,
            reconnect=reconnect,
        ),
    )
    metrics.watch_replication(node)
    return node, late


def serve(settings: Settings, report: Report) -> None:
    """Open the storage, bind both listeners, serve until a stop signal, finish in-flight
    requests and queued writes, close the database, return."""
    # From the moment a socket listens, an orchestrator may send SIGTERM: remember it rather
    # than die with a traceback, and stop as soon as the loop runs.
    early: list[int] = []
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda number, frame: early.append(number))
    # A SIGHUP before the loop runs must not kill the process (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    tls = server_context(settings)
    # Closed in reverse order of registration: servers stop first (asyncio.run returns), then
    # the storage finishes queued writes, then audit, key monitor and key provider close.
    with contextlib.ExitStack() as stack:
        storage = Storage(settings.data_dir, sync=settings.sync)
        stack.callback(storage.close)
        metrics = Metrics()
        metrics.record_posture(report)
        replication, late = _replication(settings, storage, metrics, stack)
        pii = PiiRuntime(
            settings,
            on_detected=lambda table, found: metrics.security_event("security", "pii_detected"),
        )
        install_log_redaction(pii)
        database = late.database = _open_database(settings, storage, stack, pii)
        api_socket = stack.enter_context(
            bind(settings.http_bind_address, settings.http_port, "API")
        )
        internal_socket = stack.enter_context(
            bind(settings.health_bind_address, settings.health_port, "internal listener")
        )
        wal_socket = (
            stack.enter_context(
                bind(settings.wal_grpc_host, settings.wal_grpc_port, "replication listener")
            )
            if replication is not None and settings.wal_grpc_enable_mtls
            else None
        )
        _log.info(
            "listening: API %s://%s:%d, internal http://%s:%d",
            "https" if tls else "http",
            settings.http_bind_address,
            settings.http_port,
            settings.health_bind_address,
            settings.health_port,
            extra={"pii_safe": True},
        )
        audit = late.audit = _open_audit(
            settings, report, metrics, database.envelope.provider.name, stack
        )
        if replication is not None:
            replication.start(wal_socket)
            stack.callback(replication.close)
        services = Services(
            settings,
            storage,
            database,
            metrics,
            _authenticator(settings, storage, audit),
            audit,
            pii,
            Limits.build(
                rate=settings.rate_limit_rps,
                burst=settings.rate_limit_burst,
                lockout_threshold=settings.auth_lockout_threshold,
                lockout_max_seconds=settings.auth_lockout_max_seconds,
            ),
            replication,
        )
        reloader = _tls_reloader(settings, tls, metrics, audit)
        if reloader is not None:
            stack.callback(reloader.stop)

        def hangup() -> None:
            pii.reload()
            if audit is not None:
                audit.reopen()
            if reloader is not None:
                reloader.reload()

        pairs = [
            (_server(create_app(services), tls), api_socket),
            (_server(create_internal_app(services)), internal_socket),
        ]
        asyncio.run(_serve(pairs, early, hangup))
    _log.info("stopped")
