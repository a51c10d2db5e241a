"""One node's replication: its listener, its role, the follower loop, promotion and fencing.

Every replicating node (THEMIS_ROLE=leader or follower) listens on
THEMIS_WAL_GRPC_HOST:THEMIS_WAL_GRPC_PORT, so that any follower can be promoted and be
followed. With THEMIS_WAL_GRPC_ENABLE_MTLS=1 the listener is the TLS front (``_tls``) and the
gRPC server itself sits on a unix socket in a private directory; without it (development only:
production refuses to start) gRPC listens in plaintext.
"""

from __future__ import annotations

import logging
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from themisdb.errors import ConfigError, Conflict
from themisdb.replication._tls import Material, PeerBook, Refusal, TlsFront, certificate_names
from themisdb.replication.follower import Follower, FollowerHooks, FollowerStatus, target
from themisdb.replication.leader import Registry, WalService
from themisdb.replication.v1 import wal_pb2_grpc
from themisdb.settings import Settings
from themisdb.storage import LogRecord, Storage

_log = logging.getLogger("themisdb.replication")

READ_ONLY = Conflict(
    "this node is a read-only replica: send writes to the leader", code="read_only_replica"
)
STALE_LEADER = Conflict(
    "this node was a leader and a newer one has been promoted: it takes no writes",
    code="stale_leader",
)


@dataclass(frozen=True)
class NodeHooks:
    """Where the node reports. ``event(category, action, outcome, resource, reason)`` goes to
    the audit log; ``security(event)`` counts a security event; ``applied`` sees records."""

    event: Callable[[str, str, str, dict[str, Any], str | None], None]
    security: Callable[[str], None]
    applied: Callable[[list[LogRecord]], None]
    reconnect: Callable[[], None]


class ReplicationNode:
    def __init__(
        self, settings: Settings, storage: Storage, registry: Registry, hooks: NodeHooks
    ) -> None:
        if settings.role == "standalone":
            raise ValueError("a standalone node does not replicate")
        self.settings = settings
        self.storage = storage
        self.hooks = hooks
        self.node_id = settings.node_id or socket.gethostname()
        self.role: str = settings.role
        self.fenced_by: int | None = None
        self.registry = registry
        # Read and checked before anything listens: a misconfigured mTLS refuses the start.
        self.material = Material.load(settings) if settings.wal_grpc_enable_mtls else None
        if self.material is not None:
            # A follower's id is checked against its certificate at the leader: say it now.
            names = certificate_names(self.material.certificate)
            if self.node_id not in names:
                raise ConfigError(
                    f"THEMIS_NODE_ID={self.node_id} is not a name of THEMIS_WAL_GRPC_CERT_PATH "
                    f"({', '.join(sorted(names))}): set THEMIS_NODE_ID to one of them"
                )
        if self.role == "follower":  # before anything else at startup could write
            storage.refuse_writes(READ_ONLY)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._runtime: Path | None = None  # the gRPC socket and the front's peer sockets
        self.peers: PeerBook | None = None
        self._server: grpc.Server | None = None
        self._front: TlsFront | None = None
        self.follower: Follower | None = None
        self._refusals: queue.Queue[Refusal | None] = queue.Queue(maxsize=256)
        self._suppressed = 0
        self._auditor = threading.Thread(
            target=self._audit_refusals, name="themis-wal-refusals", daemon=True
        )

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, listener: socket.socket | None) -> None:
        """Serve on ``listener`` (bound by the caller, so a busy port is a clear error; None
        in plaintext, where gRPC binds), and start following when this node is a follower."""
        service = WalService(
            self.storage,
            self.registry,
            node_id=self.node_id,
            role=lambda: self.role,
            on_newer_epoch=self._fence,
            on_event=lambda action, outcome, resource: self.hooks.event(
                "administrative", action, outcome, resource, None
            ),
            on_impostor=self._impostor,
            stopping=self._stopping,
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=48, thread_name_prefix="themis-wal"),
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
            maximum_concurrent_rpcs=64,
        )
        wal_pb2_grpc.add_WalServicer_to_server(service, server)  # type: ignore[no-untyped-call]
        if self.material is not None:
            assert listener is not None
            # A short private directory (mkdtemp: mode 0700): unix socket paths are limited to
            # 108 bytes, which a deep THEMIS_DATA_DIR would exceed.
            self._runtime = Path(tempfile.mkdtemp(prefix="themis-wal-"))
            service.peers = self.peers = PeerBook(self._runtime)
            path = str(self._runtime / "grpc.sock")
            server.add_insecure_port(f"unix:{path}")
            self._front = TlsFront(
                listener,
                self.material.server_context(
                    require_client_cert=self.settings.wal_grpc_require_client_cert
                ),
                path,
                allowed=self.settings.allowed_peers,
                on_refused=self._refused,
                book=self.peers,
            )
        else:
            address = target(self.settings.wal_grpc_host, self.settings.wal_grpc_port)
            if server.add_insecure_port(address) == 0:
                raise ConfigError(f"THEMIS_WAL_GRPC_PORT: cannot listen on {address}")
        server.start()
        self._server = server
        self._auditor.start()
        if self._front is not None:
            self._front.start()
        if self.role == "follower":
            self._start_follower()
        _log.info(
            "replication: %s %s at epoch %d on %s:%d (%s)",
            self.role,
            self.node_id,
            self.storage.epoch,
            self.settings.wal_grpc_host,
            self.settings.wal_grpc_port,
            "mTLS" if self.material else "PLAINTEXT",
            extra={"pii_safe": True},
        )

    def _start_follower(self) -> None:
        self.follower = Follower(
            self.storage,
            follower_id=self.node_id,
            peers=self.settings.peers,
            credentials=self.material.channel_credentials() if self.material else None,
            hooks=FollowerHooks(self.hooks.applied, self.hooks.event, self.hooks.reconnect),
        )
        self.follower.start()

    def close(self) -> None:
        self._stopping.set()
        if self.follower is not None:
            self.follower.stop()
        if self._front is not None:
            self._front.stop()
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
        if self._auditor.is_alive():
            self._refusals.put(None)
            self._auditor.join(5)
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)

    # --- failover -------------------------------------------------------------------------------

    def promote(self) -> int:
        """Make this follower the leader of a new epoch; returns the epoch."""
        with self._lock:
            if self.role != "follower":
                raise Conflict(f"this node is a {self.role}, not a follower", code="not_a_follower")
            if self.follower is not None:
                self.follower.stop()
            epoch = self.storage.epoch + 1
            self.storage.set_epoch(epoch)
            self.role = "leader"
            self.storage.refuse_writes(None)
        self.hooks.event(
            "administrative",
            "replication.promote",
            "success",
            {"node": self.node_id, "epoch": epoch, "lsn": self.storage.log_bounds()[1]},
            None,
        )
        _log.warning("replication: promoted to leader of epoch %d", epoch)
        return epoch

    def _fence(self, epoch: int, follower: str) -> None:
        """A peer has seen a newer epoch: this leader was deposed. Take no more writes."""
        with self._lock:
            if self.role != "leader" or self.fenced_by is not None:
                return
            self.fenced_by = epoch
            self.role = "deposed"
            self.storage.refuse_writes(STALE_LEADER)
        self.hooks.security("replication_stale_leader")
        self.hooks.event(
            "security",
            "replication.deposed",
            "failure",
            {"node": self.node_id, "epoch": self.storage.epoch, "newer_epoch": epoch},
            f"follower {follower} has seen epoch {epoch}: this leader takes no more writes",
        )
        _log.error(
            "replication: follower %s has seen epoch %d; this leader (epoch %d) is stale and "
            "refuses writes: re-seed it as a follower of the new leader",
            follower,
            epoch,
            self.storage.epoch,
        )

    # --- observation ----------------------------------------------------------------------------

    def _refused(self, refusal: Refusal) -> None:
        event = (
            "replication_handshake_failure"
            if refusal.event in ("handshake_failure", "too_many_connections")
            else "replication_peer_refused"
        )
        self.hooks.security(event)
        try:  # audited off the TLS front's event loop (the audit log may fsync)
            self._refusals.put_nowait(refusal)
        except queue.Full:
            with self._lock:
                self._suppressed += 1  # a flood: counted, summarised by the writer
        _log.warning(
            "replication: refused %s: %s (%s)", refusal.peer, refusal.event, refusal.detail
        )

    def _impostor(self, follower: str, names: frozenset[str]) -> None:
        """A peer asked as a follower id its certificate does not name."""
        self._refused(
            Refusal(
                "follower_id_refused",
                ", ".join(sorted(names)) or "?",
                f"follower_id {follower} is not a name of the peer's certificate",
            )
        )

    def _audit_refusals(self) -> None:
        while True:
            refusal = self._refusals.get()
            if refusal is None:
                return
            self.hooks.event(
                "security",
                f"replication.{refusal.event}",
                "failure",
                {"peer": refusal.peer, "side": "leader"},
                refusal.detail,
            )
            with self._lock:
                suppressed, self._suppressed = self._suppressed, 0
            if suppressed:
                self.hooks.event(
                    "security",
                    "replication.refusals_suppressed",
                    "failure",
                    {"count": suppressed},
                    "more refused peers than the audit queue holds (see the metrics)",
                )

    def follower_status(self) -> FollowerStatus | None:
        return (
            self.follower.status if self.follower is not None and self.role == "follower" else None
        )

    def status(self) -> dict[str, Any]:
        first, last = self.storage.log_bounds()
        document: dict[str, Any] = {
            "node_id": self.node_id,
            "role": self.role,
            "epoch": self.storage.epoch,
            "last_lsn": last,
            "first_lsn": first,
            "transport": "mtls" if self.material else "plaintext",
        }
        mine = self.follower_status()
        if mine is not None:
            document["following"] = {
                "state": mine.state,
                "leader": mine.leader,
                "leader_lsn": mine.leader_lsn,
                "applied_lsn": mine.applied_lsn,
                "lag_records": mine.lag_records,
                "lag_seconds": round(mine.lag_seconds, 3),
                "reconnects": mine.reconnects,
                "error": mine.error,
            }
        document["followers"] = [
            {
                "follower_id": fid,
                "applied_lsn": state.applied,
                "streaming": state.streaming,
                "lag_records": lag[0],
                "lag_seconds": round(lag[1], 3),
                "last_seen": state.seen,
            }
            for fid, state in sorted(self.registry.snapshot().items())
            for lag in [self.registry.lag(fid)]
        ]
        return document

    def health(self) -> str:
        """ "ok", or why this node should not receive traffic; the follower's lag is in it."""
        if self.role == "deposed":
            return f"deposed: a newer leader (epoch {self.fenced_by}) exists"
        mine = self.follower_status()
        if mine is None:
            return "ok"
        if mine.state == "needs_reseed":
            return f"needs re-seeding (themisdb replica seed): {mine.error}"
        return "ok"
