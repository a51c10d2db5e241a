"""``themisdb replica seed``: give a follower a consistent copy of the leader's database.

For a follower that is behind the leader's retained log, that diverged, or that starts empty
after the leader pruned its log. The server must be stopped (the data directory's lock says
so). The snapshot streams over the same (mutually authenticated) replication channel, is
checked (SHA-256, SQLite's own check) in a side file, and only then replaces the database;
the old files are moved aside, never deleted.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from themisdb.errors import ReplicationError
from themisdb.replication._tls import Material
from themisdb.replication.follower import channel, target
from themisdb.replication.v1 import wal_pb2, wal_pb2_grpc
from themisdb.settings import Settings
from themisdb.storage import DB_FILE, lock_data_dir


@dataclass(frozen=True)
class Seeded:
    leader: str
    lsn: int
    epoch: int
    size: int
    moved_aside: str | None


def _channel(peer: str, material: Material | None) -> grpc.Channel:
    return channel(peer, material.channel_credentials() if material else None)


def find_leader(settings: Settings, material: Material | None) -> tuple[str, int]:
    """The peer of THEMIS_REPLICATE_FROM that leads the newest epoch: (host:port, epoch)."""
    best: tuple[str, int] | None = None
    problems = []
    for host, port in settings.peers:
        peer = target(host, port)
        with _channel(peer, material) as channel:
            stub = wal_pb2_grpc.WalStub(channel)  # type: ignore[no-untyped-call]
            try:
                status = stub.Status(wal_pb2.StatusRequest(), timeout=10)
            except grpc.RpcError as exc:
                problems.append(f"{peer}: {exc.code().name} {exc.details()}")
                continue
        if status.role == "leader" and (best is None or status.epoch > best[1]):
            best = (peer, status.epoch)
        elif status.role != "leader":
            problems.append(f"{peer}: is a {status.role}")
    if best is None:
        raise ReplicationError(
            "no peer of THEMIS_REPLICATE_FROM leads: " + "; ".join(problems), code="no_leader"
        )
    return best


def seed(
    settings: Settings, *, force: bool, progress: Callable[[int], None] | None = None
) -> Seeded:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)  # the server must not run meanwhile
    try:
        target = data_dir / DB_FILE
        if target.exists() and not force:
            raise ReplicationError(
                f"{target} exists: --force moves it aside and installs the leader's copy",
                code="not_empty",
            )
        material = Material.load(settings) if settings.wal_grpc_enable_mtls else None
        leader, _ = find_leader(settings, material)
        partial = data_dir / f"{DB_FILE}.seed-partial"
        lsn, epoch, size = _fetch(settings, leader, material, partial, progress)
        moved = _install(partial, target) if target.exists() else None
        if moved is None:
            os.replace(partial, target)
        _fsync_dir(data_dir)
        return Seeded(leader, lsn, epoch, size, moved)
    finally:
        os.close(lock)


def _fetch(
    settings: Settings,
    leader: str,
    material: Material | None,
    partial: Path,
    progress: Callable[[int], None] | None,
) -> tuple[int, int, int]:
    digest, size = hashlib.sha256(), 0
    last: wal_pb2.SnapshotChunk | None = None
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with _channel(leader, material) as channel:
            stub = wal_pb2_grpc.WalStub(channel)  # type: ignore[no-untyped-call]
            request = wal_pb2.SnapshotRequest(follower_id=settings.node_id or socket.gethostname())
            try:
                for chunk in stub.Snapshot(request, timeout=3600):
                    if chunk.last:
                        last = chunk
                        break
                    digest.update(chunk.data)
                    os.write(fd, chunk.data)
                    size += len(chunk.data)
                    if progress is not None:
                        progress(len(chunk.data))
            except grpc.RpcError as exc:
                raise ReplicationError(
                    f"{leader}: {exc.code().name} {exc.details()}", code="snapshot_failed"
                ) from exc
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    if last is None or last.sha256 != digest.digest():
        partial.unlink(missing_ok=True)
        raise ReplicationError(
            "the snapshot arrived incomplete or damaged (SHA-256 mismatch)", code="snapshot_failed"
        )
    try:
        conn = sqlite3.connect(partial)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        verdict = str(exc)
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise ReplicationError(
            f"the snapshot fails SQLite's check: {verdict}", code="snapshot_failed"
        )
    return last.lsn, last.epoch, size


def _install(partial: Path, target: Path) -> str:
    """Move the old database (and its -wal/-shm) aside; put the snapshot in its place."""
    aside = f"{target}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{target}{suffix}")
        if old.exists():
            os.replace(old, f"{aside}{suffix}")
    os.replace(partial, target)
    return aside


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
