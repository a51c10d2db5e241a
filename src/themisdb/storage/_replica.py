"""The storage engine's side of replication, mixed into ``Storage``: applying a leader's
records with their LSNs, epochs, the log's bounds and retention, consistent snapshots, and the
refusal of client writes on a follower. Everything that writes goes through the engine's one
writer (``_internal``), so replicated batches are group-committed like any other write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from themisdb.errors import ClientError, Conflict, ReplicationError, StorageError
from themisdb.storage._records import LogRecord, Op

PRUNE_CHUNK = 2000  # log records deleted per transaction (a few ms of the writer's time)


class _Engine(Protocol):
    """What the mixin uses of ``Storage``."""

    path: Path
    _epoch: int
    _next_lsn: int
    _refusal: Conflict | None
    _committed: threading.Condition
    _last_committed: int
    _closed: bool

    def _internal(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...
    def _reader(self) -> AbstractContextManager[sqlite3.Connection]: ...
    def _apply(
        self, conn: sqlite3.Connection, op: Op, origin: LogRecord | None = None
    ) -> int | None: ...
    @staticmethod
    def _have(conn: sqlite3.Connection, record: LogRecord) -> bool: ...
    @staticmethod
    def _set_epoch(conn: sqlite3.Connection, epoch: int) -> None: ...
    def log_bounds(self) -> tuple[int, int]: ...


class ReplicaLog:
    @property
    def epoch(self: _Engine) -> int:
        """The newest leader epoch this database has seen (1 until a failover)."""
        return self._epoch

    def refuse_writes(self: _Engine, refusal: Conflict | None) -> None:
        """Refuse every client write with ``refusal`` (a follower, a fenced stale leader), or
        accept them again (None). Replicated records still apply."""
        self._refusal = refusal

    @property
    def refusal(self: _Engine) -> Conflict | None:
        return self._refusal

    def apply_records(self: _Engine, records: list[LogRecord], epoch: int) -> int:
        """Apply a leader's batch in one durable transaction, keeping each record's LSN, and
        remember ``epoch``. Returns the applied LSN. Raises ReplicationError (nothing applied)
        when a record is damaged or out of order or does not apply to this database."""

        def apply(conn: sqlite3.Connection) -> int:
            for record in records:
                if not record.intact():
                    raise ReplicationError(
                        f"record {record.lsn} fails its CRC", code="corrupt_record"
                    )
                if record.lsn < self._next_lsn and self._have(conn, record):
                    continue  # sent again (a reconnect): applying twice would change nothing
                if record.lsn != self._next_lsn:
                    raise ReplicationError(
                        f"record {record.lsn} arrived where {self._next_lsn} was due",
                        code="out_of_order",
                    )
                op = Op(record.op, record.table, record.pk, record.payload)  # type: ignore[arg-type]
                try:
                    lsn = self._apply(conn, op, record)
                except ClientError as exc:
                    raise ReplicationError(
                        f"record {record.lsn} does not apply here ({exc.message})",
                        code="diverged",
                    ) from exc
                if lsn != record.lsn:  # e.g. a delete of a key this database does not have
                    raise ReplicationError(
                        f"record {record.lsn} ({record.op}) changes nothing here",
                        code="diverged",
                    )
            self._set_epoch(conn, max(epoch, self._epoch))
            return self._next_lsn - 1

        applied: int = self._internal(apply)
        self._epoch = max(epoch, self._epoch)
        return applied

    @staticmethod
    def _have(conn: sqlite3.Connection, record: LogRecord) -> bool:
        """This log already holds ``record`` (same LSN, epoch and CRC); raise if it holds a
        different record there: the two logs diverged."""
        row = conn.execute(
            "SELECT crc32, epoch FROM themis_log WHERE lsn = ?", (record.lsn,)
        ).fetchone()
        if row is None:
            return True  # pruned here: it was applied long ago
        if (int(row[0]), int(row[1])) != (record.crc32, record.epoch):
            raise ReplicationError(
                f"record {record.lsn} differs from the one applied here", code="diverged"
            )
        return True

    def set_epoch(self: _Engine, epoch: int) -> None:
        """Durably record a newer epoch (a promotion, or a newer leader seen)."""
        if epoch < self._epoch:
            raise ReplicationError(f"epoch {epoch} is older than {self._epoch}", code="stale")
        self._internal(lambda conn: self._set_epoch(conn, epoch))
        self._epoch = epoch

    @staticmethod
    def _set_epoch(conn: sqlite3.Connection, epoch: int) -> None:
        conn.execute(
            "INSERT INTO themis_meta(key, value) VALUES ('epoch', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(epoch),),
        )

    def wait_for_lsn(self: _Engine, lsn: int, timeout: float) -> bool:
        """Block until a commit has made ``lsn`` durable or ``timeout`` passes."""
        with self._committed:
            return self._committed.wait_for(lambda: self._last_committed >= lsn, timeout)

    def log_bounds(self: _Engine) -> tuple[int, int]:
        """(first LSN still in the log, last LSN); first is last + 1 when the log is empty."""
        with self._reader() as conn:
            first = conn.execute("SELECT min(lsn) FROM themis_log").fetchone()[0]
            row = conn.execute("SELECT value FROM themis_meta WHERE key = 'last_lsn'").fetchone()
        last = int(row[0]) if row else 0
        return (int(first) if first is not None else last + 1), last

    def record_epoch(self: _Engine, lsn: int) -> int | None:
        """The epoch of the record at ``lsn`` (0 for lsn 0), None when it was pruned."""
        if lsn == 0:
            return 0
        with self._reader() as conn:
            row = conn.execute("SELECT epoch FROM themis_log WHERE lsn = ?", (lsn,)).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT value FROM themis_meta WHERE key = 'log_floor'"
                ).fetchone()
                floor = [int(x) for x in row[0].split()] if row else [0, 0]
                return floor[1] if floor[0] == lsn else None
        return int(row[0])

    def retention_floor(self: _Engine, *, records: int | None, size: int | None) -> int:
        """The oldest LSN the retention bound keeps (records and/or bytes of log)."""
        first, last = self.log_bounds()
        keep = first
        if records is not None:
            keep = max(keep, last - records + 1)
        if size is not None:
            with self._reader() as conn:
                row = conn.execute(
                    "SELECT size_total FROM themis_log ORDER BY lsn DESC LIMIT 1"
                ).fetchone()
                if row is not None:
                    over = conn.execute(
                        "SELECT lsn FROM themis_log WHERE size_total > ? ORDER BY lsn LIMIT 1",
                        (int(row[0]) - size,),
                    ).fetchone()
                    keep = max(keep, int(over[0]) if over else last + 1)
        return keep

    def prune_log(
        self: _Engine,
        keep_from: int,
        followers: dict[str, tuple[int, float]],
        *,
        chunk: int = PRUNE_CHUNK,
    ) -> int:
        """Save the followers' applied LSNs, then delete log records below ``keep_from``
        (remembering the newest deleted one's epoch), ``chunk`` records per transaction: one
        big DELETE would hold the single writer, and every client write, for a second or more
        (measured by bench/replication.py). Returns the number of records deleted."""

        def save(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO themis_followers(id, applied_lsn, seen) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET applied_lsn = excluded.applied_lsn, "
                "seen = excluded.seen",
                [(fid, applied, seen) for fid, (applied, seen) in followers.items()],
            )

        def prune(conn: sqlite3.Connection, below: int) -> int:
            row = conn.execute(
                "SELECT lsn, epoch FROM themis_log WHERE lsn < ? ORDER BY lsn DESC LIMIT 1",
                (below,),
            ).fetchone()
            if row is None:
                return 0
            conn.execute(
                "INSERT INTO themis_meta(key, value) VALUES ('log_floor', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"{row[0]} {row[1]}",),
            )
            deleted: int = conn.execute("DELETE FROM themis_log WHERE lsn < ?", (below,)).rowcount
            return deleted

        if followers:
            self._internal(save)
        total = 0
        while True:
            first, _ = self.log_bounds()
            if first >= keep_from:
                return total
            total += self._internal(partial(prune, below=min(keep_from, first + chunk)))

    def followers(self: _Engine) -> dict[str, tuple[int, float]]:
        """Followers saved by prune_log: id -> (applied LSN, last seen)."""
        with self._reader() as conn:
            rows = conn.execute("SELECT id, applied_lsn, seen FROM themis_followers").fetchall()
        return {str(i): (int(a), float(t)) for i, a, t in rows}

    def snapshot(self: _Engine, target: Path) -> tuple[int, int]:
        """Copy the whole database, consistently, to ``target`` (SQLite's online backup from
        one read transaction); returns the copy's (last LSN, epoch)."""
        if self._closed:
            raise StorageError("storage is closed")
        try:
            source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
                copy.execute("DELETE FROM themis_followers")  # this node's, not the copy's
                copy.commit()
                rows = dict(copy.execute("SELECT key, value FROM themis_meta").fetchall())
            finally:
                copy.close()
                source.close()
        except sqlite3.Error as exc:
            raise StorageError(f"snapshot failed: {exc}") from exc
        return int(rows.get("last_lsn", 0)), int(rows.get("epoch", 1))
