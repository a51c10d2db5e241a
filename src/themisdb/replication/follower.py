"""The follower: streams the leader's log and applies it, batch by batch, in LSN order.

Each batch is applied in one durable transaction together with the applied LSN (the storage
engine's ``apply_records``), so a follower killed at any moment resumes exactly after the last
batch it applied. It connects to the first peer of THEMIS_REPLICATE_FROM that leads, refuses a
leader whose epoch is older than the newest it has seen, and reconnects with backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from themisdb.errors import ReplicationError, StorageError
from themisdb.replication.leader import from_message
from themisdb.replication.v1 import wal_pb2, wal_pb2_grpc
from themisdb.storage import LogRecord, Storage

_log = logging.getLogger("themisdb.replication")

SILENCE_SECONDS = 5.0  # no batch (the leader sends one every second) for this long: reconnect
ACK_SECONDS = 0.2
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def target(host: str, port: int) -> str:
    """``host:port`` as gRPC dials it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def channel(peer: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to a replication peer: mTLS with ``credentials``, else plaintext."""
    if credentials is None:
        return grpc.insecure_channel(peer, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(peer, credentials, options=CHANNEL_OPTIONS)


@dataclass
class FollowerStatus:
    state: str = "connecting"  # connecting | streaming | needs_reseed | stopped
    leader: str | None = None
    leader_lsn: int = 0
    applied_lsn: int = 0
    lag_records: int = 0
    lag_seconds: float = 0.0
    error: str | None = None
    reconnects: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Deposed(Exception):
    """The peer answered but must not be followed (not the leader, or a stale one)."""


@dataclass(frozen=True)
class FollowerHooks:
    """What the follower reports: applied records, events (category, action, outcome,
    resource, reason), reconnects."""

    applied: Callable[[list[LogRecord]], None]
    event: Callable[[str, str, str, dict[str, Any], str | None], None]
    reconnect: Callable[[], None]


class Follower:
    def __init__(
        self,
        storage: Storage,
        *,
        follower_id: str,
        peers: tuple[tuple[str, int], ...],
        credentials: grpc.ChannelCredentials | None,
        hooks: FollowerHooks,
    ) -> None:
        self.storage = storage
        self.follower_id = follower_id
        self.peers = [target(host, port) for host, port in peers]
        self.credentials = credentials
        self.hooks = hooks
        self.status = FollowerStatus(applied_lsn=storage.log_bounds()[1])
        self._stop = threading.Event()
        self._call: Any = None
        self._ack: Any = None
        self._streamed = False
        self._last_message = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="themis-follower", daemon=True)
        self._watchdog = threading.Thread(
            target=self._watch, name="themis-follower-watchdog", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive():
            self._thread.join(15)
        self.status.state = "stopped"

    # --- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        preferred = 0
        while not self._stop.is_set():
            for offset in range(len(self.peers)):
                index = (preferred + offset) % len(self.peers)
                if self._stop.is_set():
                    return
                if self._follow(self.peers[index]):
                    preferred, backoff = index, BACKOFF_MIN  # it streamed: start there again
                    break
            else:
                self._stop.wait(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            self.status.reconnects += 1
            self.hooks.reconnect()
            self._stop.wait(BACKOFF_MIN)

    def _follow(self, peer: str) -> bool:
        """Stream from ``peer`` until the stream ends; True if it streamed at all (whether it
        then ended cleanly or with an error)."""
        self._streamed = False
        with channel(peer, self.credentials) as chan:
            stub = wal_pb2_grpc.WalStub(chan)  # type: ignore[no-untyped-call]
            try:
                self._stream(stub, peer)
            except grpc.RpcError as exc:
                self._rpc_failed(peer, exc)
            except _Deposed as exc:
                self.status.error = str(exc)
            except ReplicationError as exc:
                self._needs_reseed(peer, f"{exc.code}: {exc}")
            except StorageError as exc:
                self.status.error = f"cannot apply: {exc}"
                _log.error("replication: cannot apply records: %s", exc)
            finally:
                self._call = None
        if self.status.state == "streaming":
            self.status.state = "connecting"
        return self._streamed

    def _stream(self, stub: wal_pb2_grpc.WalStub, peer: str) -> None:
        applied = self.storage.log_bounds()[1]
        last_epoch = self.storage.record_epoch(applied)
        request = wal_pb2.StreamRequest(
            follower_id=self.follower_id,
            from_lsn=applied + 1,
            epoch=self.storage.epoch,
            last_epoch=last_epoch or 0,
        )
        self._last_message = time.monotonic()
        self._call = stub.Stream(request, wait_for_ready=False)
        if self._stop.is_set():
            self._call.cancel()
        last_ack = 0.0
        for batch in self._call:
            self._last_message = time.monotonic()
            if batch.epoch < self.storage.epoch:
                self.hooks.event(
                    "security",
                    "replication.stale_leader",
                    "failure",
                    {"peer": peer, "epoch": batch.epoch, "newest_epoch": self.storage.epoch},
                    "a leader of an older epoch sent records: refused",
                )
                raise _Deposed(f"{peer} leads epoch {batch.epoch}, older than ours")
            if not self._streamed:
                self._streamed = True
                self.status.state, self.status.leader, self.status.error = "streaming", peer, None
                self.hooks.event(
                    "administrative",
                    "replication.follow",
                    "success",
                    {"leader": peer, "from_lsn": applied + 1, "epoch": batch.epoch},
                    None,
                )
            records = [from_message(r) for r in batch.records]
            if records:
                applied = self.storage.apply_records(records, batch.epoch)
                self.hooks.applied(records)
            elif batch.epoch > self.storage.epoch:
                self.storage.set_epoch(batch.epoch)
            self._observe(batch, applied, records)
            now = time.monotonic()
            if now - last_ack >= ACK_SECONDS or applied >= batch.leader_lsn:
                # Kept: a dropped future may cancel its call.
                self._ack = stub.Ack.future(
                    wal_pb2.AckRequest(
                        follower_id=self.follower_id, applied_lsn=applied, epoch=self.storage.epoch
                    ),
                    timeout=5,
                )
                last_ack = now

    def _observe(self, batch: wal_pb2.Batch, applied: int, records: list[LogRecord]) -> None:
        status = self.status
        status.leader_lsn, status.applied_lsn = batch.leader_lsn, applied
        status.lag_records = max(0, batch.leader_lsn - applied)
        if not status.lag_records:
            status.lag_seconds = 0.0
        elif records:
            # Upper bound, on the leader's clock: the next record committed after this one.
            status.lag_seconds = max(0.0, batch.leader_time - records[-1].ts)

    def _rpc_failed(self, peer: str, exc: grpc.RpcError) -> None:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.CANCELLED and self._stop.is_set():
            return
        if details.startswith(("not_leader", "stale_leader")):
            self.status.error = f"{peer}: {details}"
            return
        if details.startswith(("diverged", "behind_retained_log")):
            self._needs_reseed(peer, details)
            return
        self.status.error = f"{peer}: {code.name}: {details}"
        if _is_tls_failure(details):
            self.hooks.event(
                "security",
                "replication.handshake_failure",
                "failure",
                {"peer": peer, "side": "follower"},
                details[:300],
            )
        _log.warning("replication: %s: %s %s", peer, code.name, details[:300])

    def _needs_reseed(self, peer: str, detail: str) -> None:
        self.status.state, self.status.error = "needs_reseed", f"{peer}: {detail}"
        self.hooks.event(
            "security", "replication.needs_reseed", "failure", {"peer": peer}, detail[:300]
        )
        _log.error("replication: %s: %s", peer, detail)
        self._stop.wait(10)  # an operator must act; keep trying slowly in case a peer can

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            call = self._call
            if call is not None and time.monotonic() - self._last_message > SILENCE_SECONDS:
                _log.warning("replication: no batch for %.0f s: reconnecting", SILENCE_SECONDS)
                call.cancel()


def _is_tls_failure(details: str) -> bool:
    lowered = details.lower()
    return any(
        word in lowered for word in ("handshake", "certificate", "ssl", "tls", "peer name", "alpn")
    )
