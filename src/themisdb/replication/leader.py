"""The replication service every node runs: streams the log while this node leads.

A follower calls ``Stream`` with the first LSN it lacks and the epoch of its last record; the
leader checks that the two logs agree there, then sends batches of records as they commit and
an empty batch every second while idle (the follower's sign of life). Followers acknowledge
what they applied with ``Ack``; that drives retention (the log is kept until every registered
follower has it, within THEMIS_WAL_RETENTION) and the lag metrics.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from themisdb.replication._tls import PeerBook
from themisdb.replication.v1 import wal_pb2, wal_pb2_grpc
from themisdb.storage import LogRecord, Storage

_log = logging.getLogger("themisdb.replication")

BATCH_RECORDS = 512
HEARTBEAT_SECONDS = 1.0
SNAPSHOT_CHUNK = 1024 * 1024
MAX_FOLLOWERS = 32
_FOLLOWER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class FollowerState:
    applied: int
    seen: float
    streaming: bool = False


def to_message(record: LogRecord) -> wal_pb2.Record:
    message = wal_pb2.Record(
        lsn=record.lsn,
        op=record.op,
        table=record.table,
        key=record.pk,
        crc32=record.crc32,
        ts=record.ts,
        epoch=record.epoch,
    )
    if record.payload is not None:
        message.payload = record.payload
    return message


def from_message(message: wal_pb2.Record) -> LogRecord:
    return LogRecord(
        message.lsn,
        message.op,
        message.table,
        message.key,
        message.payload if message.HasField("payload") else None,
        message.crc32,
        message.ts,
        message.epoch,
    )


class Registry:
    """The followers of this node and what each has applied (persisted by ``prune``)."""

    def __init__(self, storage: Storage, retention: tuple[int | None, int | None]) -> None:
        self._storage = storage
        self._retention = retention
        self._lock = threading.Lock()
        self._followers = {
            fid: FollowerState(applied, seen)
            for fid, (applied, seen) in storage.followers().items()
        }

    def seen(self, follower_id: str, applied: int, *, exact: bool = False) -> bool:
        """Record that ``follower_id`` has applied ``applied`` (``exact``: what it says at
        connect time, else only ever forward); False when the registry is full."""
        with self._lock:
            state = self._followers.get(follower_id)
            if state is None:
                if len(self._followers) >= MAX_FOLLOWERS:
                    return False
                state = self._followers[follower_id] = FollowerState(applied, time.time())
            state.applied = applied if exact else max(state.applied, applied)
            state.seen = time.time()
            return True

    def streaming(self, follower_id: str, on: bool) -> None:
        with self._lock:
            state = self._followers.get(follower_id)
            if state is not None:
                state.streaming = on
                state.seen = time.time()

    def snapshot(self) -> dict[str, FollowerState]:
        with self._lock:
            return {
                k: FollowerState(v.applied, v.seen, v.streaming) for k, v in self._followers.items()
            }

    def lag(self, follower_id: str) -> tuple[int, float]:
        """(records, seconds) the follower is behind: seconds since the oldest record it
        lacks was committed, on this node's clock."""
        with self._lock:
            state = self._followers.get(follower_id)
        if state is None:
            return 0, 0.0
        _, last = self._storage.log_bounds()
        behind = max(0, last - state.applied)
        if not behind:
            return 0, 0.0
        oldest = self._storage.log_records(state.applied + 1, 1)
        return behind, max(0.0, time.time() - oldest[0].ts) if oldest else 0.0

    def prune(self) -> int:
        """Drop log records every follower has, within the retention bound; persist the
        registry. Returns how many records were deleted."""
        records, size = self._retention
        first, last = self._storage.log_bounds()
        followers = self.snapshot()
        keep = self._storage.retention_floor(records=records, size=size)
        if followers:  # what every follower has may go; without followers the bound decides
            keep = max(keep, min(min(s.applied for s in followers.values()) + 1, last + 1))
        if keep <= first and not followers:
            return 0
        return self._storage.prune_log(
            keep, {fid: (s.applied, s.seen) for fid, s in followers.items()}
        )


class WalService(wal_pb2_grpc.WalServicer):
    """The gRPC servicer. ``leading()`` says whether this node leads now (a follower answers
    Status but refuses Stream and Snapshot until it is promoted)."""

    def __init__(
        self,
        storage: Storage,
        registry: Registry,
        *,
        node_id: str,
        role: Callable[[], str],
        on_newer_epoch: Callable[[int, str], None],
        on_event: Callable[[str, str, dict[str, Any]], None],
        on_impostor: Callable[[str, frozenset[str]], None],
        stopping: threading.Event,
    ) -> None:
        self.storage = storage
        self.registry = registry
        self.node_id = node_id
        self.role = role
        self.on_newer_epoch = on_newer_epoch
        self.on_event = on_event
        self.on_impostor = on_impostor
        self.stopping = stopping
        # Behind the mTLS front: the certificate names of each caller (None in plaintext).
        self.peers: PeerBook | None = None

    def _follower_id(self, value: str, context: grpc.ServicerContext) -> str:
        """A well-formed follower id that, behind the mTLS front, the caller's certificate
        names: a node cannot speak for another (retention, lag, snapshots are per id)."""
        if not _FOLLOWER_ID.fullmatch(value):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "follower_id: 1-64 letters, digits, '.', '_' or '-'",
            )
        if self.peers is not None:
            names = self.peers.names(context.peer())
            if names is None or value not in names:
                self.on_impostor(value, names or frozenset())
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"follower_id {value} is not a name of your certificate: set THEMIS_NODE_ID "
                    "to one of its names",
                )
        return value

    def _require_leading(self, epoch: int, follower: str, context: grpc.ServicerContext) -> None:
        if epoch > self.storage.epoch:
            # A follower has seen a newer leader: this node was deposed while away.
            self.on_newer_epoch(epoch, follower)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stale_leader: this node leads epoch {self.storage.epoch}, "
                f"the follower has seen epoch {epoch}",
            )
        if self.role() != "leader":
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"not_leader: this node is a {self.role()}"
            )

    def Stream(
        self, request: wal_pb2.StreamRequest, context: grpc.ServicerContext
    ) -> Iterator[wal_pb2.Batch]:
        follower = self._follower_id(request.follower_id, context)
        self._require_leading(request.epoch, follower, context)
        first, last = self.storage.log_bounds()
        start = max(1, request.from_lsn)
        if start > last + 1:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"diverged: the follower has LSN {start - 1}, this leader only {last}; "
                "re-seed it (themisdb replica seed)",
            )
        if start < first:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"behind_retained_log: the follower needs LSN {start}, the log starts at "
                f"{first}; re-seed it (themisdb replica seed)",
            )
        previous = self.storage.record_epoch(start - 1)
        if previous is None:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"behind_retained_log: LSN {start - 1} is no longer in the log; re-seed it",
            )
        if previous != request.last_epoch:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"diverged: LSN {start - 1} is from epoch {previous} here and epoch "
                f"{request.last_epoch} on the follower; re-seed it (themisdb replica seed)",
            )
        if not self.registry.seen(follower, start - 1, exact=True):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many followers")
        self.registry.streaming(follower, True)
        self.on_event("replication.follower_connected", "success", {"follower": follower})
        try:
            yield from self._batches(start, context)
        finally:
            self.registry.streaming(follower, False)

    def _batches(self, start: int, context: grpc.ServicerContext) -> Iterator[wal_pb2.Batch]:
        next_lsn = start
        last_sent = time.monotonic()
        while context.is_active() and not self.stopping.is_set():
            if self.role() != "leader":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not_leader: deposed")
            records = self.storage.log_records(next_lsn, BATCH_RECORDS)
            if records and records[0].lsn != next_lsn:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"behind_retained_log: LSN {next_lsn} was pruned; re-seed the follower",
                )
            now = time.monotonic()
            if records or now - last_sent >= HEARTBEAT_SECONDS:
                _, last = self.storage.log_bounds()
                yield wal_pb2.Batch(
                    epoch=self.storage.epoch,
                    leader_lsn=max(last, records[-1].lsn if records else 0),
                    leader_time=time.time(),
                    records=[to_message(r) for r in records],
                )
                last_sent = now
            if records:
                next_lsn = records[-1].lsn + 1
                if len(records) == BATCH_RECORDS:
                    continue
            self.storage.wait_for_lsn(next_lsn, HEARTBEAT_SECONDS / 4)

    def Ack(self, request: wal_pb2.AckRequest, context: grpc.ServicerContext) -> wal_pb2.AckReply:
        follower = self._follower_id(request.follower_id, context)
        if request.epoch > self.storage.epoch:
            self.on_newer_epoch(request.epoch, follower)
        if not self.registry.seen(follower, request.applied_lsn):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many followers")
        return wal_pb2.AckReply()

    def Status(
        self, request: wal_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> wal_pb2.StatusReply:
        first, last = self.storage.log_bounds()
        reply = wal_pb2.StatusReply(
            node_id=self.node_id,
            role=self.role(),
            epoch=self.storage.epoch,
            last_lsn=last,
            first_lsn=first,
        )
        for fid, state in sorted(self.registry.snapshot().items()):
            records, seconds = self.registry.lag(fid)
            reply.followers.add(
                follower_id=fid,
                applied_lsn=state.applied,
                lag_records=records,
                lag_seconds=seconds,
                last_seen=state.seen,
            )
        return reply

    def Snapshot(
        self, request: wal_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[wal_pb2.SnapshotChunk]:
        follower = self._follower_id(request.follower_id, context)
        self._require_leading(0, follower, context)
        with tempfile.TemporaryDirectory(dir=self.storage.data_dir, prefix=".snapshot-") as tmp:
            copy = Path(tmp) / "snapshot.db"
            lsn, epoch = self.storage.snapshot(copy)
            # Keep the log from here on for this follower: it streams from lsn + 1 next.
            if not self.registry.seen(follower, lsn, exact=True):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many followers")
            self.on_event("replication.snapshot", "success", {"follower": follower, "lsn": lsn})
            digest = hashlib.sha256()
            with open(copy, "rb") as source:
                while chunk := source.read(SNAPSHOT_CHUNK):
                    digest.update(chunk)
                    yield wal_pb2.SnapshotChunk(data=chunk)
            yield wal_pb2.SnapshotChunk(lsn=lsn, epoch=epoch, sha256=digest.digest(), last=True)


class Pruner:
    """Every few seconds, drops log records no follower needs (``Registry.prune``). Runs on
    every node, standalone ones too: their log is bounded by THEMIS_WAL_RETENTION alone."""

    def __init__(self, registry: Registry, interval: float = 5.0) -> None:
        self._registry = registry
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="themis-wal-prune", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                deleted = self._registry.prune()
            except Exception:
                _log.exception("replication: pruning the log failed")
                continue
            if deleted:
                _log.info("replication: pruned %d log record(s)", deleted)
