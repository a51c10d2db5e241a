"""The SQLite storage engine: one writer with group commit, a pool of readers, a logical log.

Why one writer thread: SQLite allows one writer at a time anyway, and a transaction's fsync is
the cost that dominates (≈2k commits/s with synchronous=FULL here). The writer drains every
request that queued up while the previous commit was syncing and commits them together, each
request inside its own SAVEPOINT so that one bad request never takes others down. A request's
future resolves only after COMMIT returned, i.e. after its data is durable.

Every change appends a logical log row (LSN, op, table, key, payload, CRC32, epoch) in the
same transaction as the change, so the log can never disagree with the data. LSNs are gap-free:
a rolled-back request gives its LSNs back. A follower applies the leader's records through the
same writer (``apply_records``), keeping their LSNs, so its log is a copy of the leader's.

One process at a time owns a data directory: an exclusive lock on ``.lock`` beside the
database, so a second server (or ``replica seed``) cannot write under a running one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from themisdb.errors import ClientError, Conflict, NotFound, ReplicationError, StorageError
from themisdb.storage._names import (
    check_field,
    check_pk,
    check_table,
    field_expr,
    sql_table,
)
from themisdb.storage._records import LogRecord, Op, record_crc
from themisdb.storage._replica import ReplicaLog
from themisdb.storage.query import Explain, Query, QueryResult, build_sql

_log = logging.getLogger(__name__)

DB_FILE = "themis.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS themis_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS themis_tables(name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS themis_indexes(
    tbl TEXT NOT NULL, field TEXT NOT NULL, sql_name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, PRIMARY KEY (tbl, field));
CREATE TABLE IF NOT EXISTS themis_deks(
    tbl TEXT NOT NULL, version INTEGER NOT NULL, wrapped TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (tbl, version));
CREATE TABLE IF NOT EXISTS themis_log(
    lsn INTEGER PRIMARY KEY, op TEXT NOT NULL, tbl TEXT NOT NULL, pk TEXT NOT NULL,
    payload TEXT, crc32 INTEGER NOT NULL, ts REAL NOT NULL,
    -- the leader epoch that wrote the record, and the log's running size in bytes up to and
    -- including it (retention by bytes is then one range lookup, not a sum over the log)
    epoch INTEGER NOT NULL, size_total INTEGER NOT NULL);
-- Followers of this node as leader, and the LSN each has applied (retention keeps the rest).
CREATE TABLE IF NOT EXISTS themis_followers(
    id TEXT PRIMARY KEY, applied_lsn INTEGER NOT NULL, seen REAL NOT NULL);
"""
_LOG_COLUMNS = "lsn, op, tbl, pk, payload, crc32, ts, epoch"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class IndexInfo:
    table: str
    field: str
    entries: int
    created: float


def encode_entity(entity: dict[str, Any]) -> str:
    """The canonical JSON text stored and logged for an entity."""
    return json.dumps(entity, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def put_op(table: str, pk: str, entity: dict[str, Any]) -> Op:
    return Op("put", check_table(table), check_pk(pk), encode_entity(entity))


def delete_op(table: str, pk: str) -> Op:
    return Op("delete", check_table(table), check_pk(pk))


def read_meta(data_dir: str | os.PathLike[str], prefix: str) -> dict[str, str] | None:
    """Values written with ``set_meta`` whose key starts with ``prefix``, read through a
    read-only connection (no writer, safe beside a running server). None: no database yet."""
    path = Path(data_dir) / DB_FILE
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT key, value FROM themis_meta WHERE substr(key, 1, ?) = ?",
                (len(prefix) + 5, f"user:{prefix}"),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return {str(k).removeprefix("user:"): str(v) for k, v in rows}


@dataclass
class _Job:
    ops: list[Op]
    future: Future[Any]
    # An internal job (replicated records, epoch, log pruning): runs inside the transaction
    # instead of ops; its return value resolves the future.
    fn: Callable[[sqlite3.Connection], Any] | None = None


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory's exclusive lock (released when the fd is closed)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(
            f"another process uses the data directory {data_dir} (a running server?)"
        ) from exc
    return fd


_STOP = None


class Storage(ReplicaLog):
    """The database files under one data directory. Thread-safe. (Replication's side:
    ``ReplicaLog``.)"""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        sync: Literal["full", "normal"] = "full",
        readers: int = 4,
        max_group: int = 512,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self.sync = sync
        self._max_group = max_group
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = lock_data_dir(self.data_dir)
        except OSError as exc:
            raise StorageError(f"cannot use {self.data_dir}: {exc.strerror}") from exc
        try:
            self._writer_conn = self._connect()
            self._writer_conn.executescript(_SCHEMA)
            self._next_lsn = self._load_last_lsn() + 1
            self._epoch = int(self._internal_meta("epoch") or 1)
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise StorageError(f"cannot open the database in {self.data_dir}: {exc}") from exc
        # Notified after every commit: the replication leader waits here for new records.
        self._committed = threading.Condition()
        self._last_committed = self._next_lsn - 1
        # Set on a follower (or a fenced stale leader): every client write is refused with it.
        self._refusal: Conflict | None = None
        self._readers: queue.Queue[sqlite3.Connection] = queue.Queue()
        for _ in range(readers):
            self._readers.put(self._connect(readonly=True))
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        # Counters of the writer (read without a lock: approximate is fine for metrics).
        self.commits = 0
        self.committed_requests = 0
        self._thread = threading.Thread(target=self._write_loop, name="themis-writer", daemon=True)
        self._thread.start()

    # --- connections ----------------------------------------------------------------------------

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StorageError("storage is closed")
        conn = self._readers.get()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc
        finally:
            self._readers.put(conn)

    def _load_last_lsn(self) -> int:
        return int(self._internal_meta("last_lsn") or 0)

    def _internal_meta(self, key: str) -> str | None:
        row = self._writer_conn.execute(
            "SELECT value FROM themis_meta WHERE key = ?", (key,)
        ).fetchone()
        return str(row[0]) if row else None

    # --- writes ---------------------------------------------------------------------------------

    def submit(self, ops: list[Op]) -> Future[list[int | None]]:
        """Queue ``ops`` as one atomic request. The future resolves to one LSN per op (None for
        an op that changed nothing) once the transaction is durable, or raises."""
        future: Future[list[int | None]] = Future()
        if self._refusal is not None:
            future.set_exception(self._refusal)
            return future
        return self._enqueue(_Job(list(ops), future))

    def _enqueue(self, job: _Job) -> Future[Any]:
        if self._closed:
            job.future.set_exception(StorageError("storage is closed"))
        else:
            self._queue.put(job)
        return job.future

    def _internal(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in a write transaction of the writer thread; wait for it to be durable."""
        return self._enqueue(_Job([], Future(), fn)).result()

    def write(self, ops: list[Op]) -> list[int | None]:
        """submit() and wait."""
        return self.submit(ops).result()

    def put(self, table: str, pk: str, entity: dict[str, Any]) -> int:
        lsn = self.write([put_op(table, pk, entity)])[0]
        assert lsn is not None
        return lsn

    def delete(self, table: str, pk: str) -> int | None:
        return self.write([delete_op(table, pk)])[0]

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is _STOP:
                break
            jobs = [job]
            while len(jobs) < self._max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                jobs.append(more)
            self._commit(jobs)
        try:
            self._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._writer_conn.close()

    def _commit(self, jobs: list[_Job]) -> None:
        conn = self._writer_conn
        first_lsn = self._next_lsn
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job_lsn = self._next_lsn
                conn.execute("SAVEPOINT job")
                try:
                    if job.fn is not None:
                        lsns = job.fn(conn)
                    else:
                        lsns = [self._apply(conn, op) for op in job.ops]
                except (ClientError, ReplicationError) as exc:
                    conn.execute("ROLLBACK TO job")
                    self._next_lsn = job_lsn  # give the LSNs back: the log stays gap-free
                    outcomes.append((job, None, exc))
                else:
                    outcomes.append((job, lsns, None))
                conn.execute("RELEASE job")
            conn.execute(
                "INSERT INTO themis_meta(key, value) VALUES ('last_lsn', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(self._next_lsn - 1),),
            )
            conn.execute("COMMIT")
            self.commits += 1
            self.committed_requests += len(jobs)
            with self._committed:
                self._last_committed = self._next_lsn - 1
                self._committed.notify_all()
        except sqlite3.Error as exc:
            _log.error("write transaction of %d request(s) failed: %s", len(jobs), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._next_lsn = first_lsn
            for job in jobs:
                job.future.set_exception(StorageError("the write could not be made durable"))
            return
        for done, result, error in outcomes:
            if error is not None:
                done.future.set_exception(error)
            else:
                done.future.set_result(result)

    def _apply(
        self, conn: sqlite3.Connection, op: Op, origin: LogRecord | None = None
    ) -> int | None:
        """Apply one change and log it. ``origin``: the leader's record being replicated."""
        table = sql_table(op.table)
        if op.kind == "put":
            self._ensure_table(conn, op.table)
            if op.expect is not None:
                row = conn.execute(f"SELECT body FROM {table} WHERE pk = ?", (op.pk,)).fetchone()
                if row is None or row[0] != op.expect:
                    return None
            lsn = self._log(conn, op, origin)
            conn.execute(
                f"INSERT INTO {table}(pk, body, lsn) VALUES (?, ?, ?) "
                "ON CONFLICT(pk) DO UPDATE SET body = excluded.body, lsn = excluded.lsn",
                (op.pk, op.body, lsn),
            )
            return lsn
        if op.kind == "delete":
            if not self._table_exists(conn, op.table):
                return None
            if conn.execute(f"SELECT 1 FROM {table} WHERE pk = ?", (op.pk,)).fetchone() is None:
                return None
            lsn = self._log(conn, op, origin)
            conn.execute(f"DELETE FROM {table} WHERE pk = ?", (op.pk,))
            return lsn
        if op.kind == "set_meta":
            conn.execute(
                "INSERT INTO themis_meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"user:{op.pk}", op.body),
            )
            return self._log(conn, op, origin)
        if op.kind == "put_dek":
            conn.execute(
                "INSERT INTO themis_deks(tbl, version, wrapped, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(tbl, version) DO UPDATE SET wrapped = excluded.wrapped",
                (op.table, int(op.pk), op.body, time.time()),
            )
            return self._log(conn, op, origin)
        if op.kind == "create_index":
            return self._create_index(conn, op, origin)
        if op.kind == "drop_index":
            return self._drop_index(conn, op, origin)
        raise AssertionError(op.kind)

    def _log(self, conn: sqlite3.Connection, op: Op, origin: LogRecord | None = None) -> int:
        lsn = self._next_lsn
        size = len(op.table) + len(op.pk) + len(op.body or "") + 48  # + the fixed columns
        conn.execute(
            "INSERT INTO themis_log(lsn, op, tbl, pk, payload, crc32, ts, epoch, size_total) "
            "VALUES (?,?,?,?,?,?,?,?, ? + coalesce("
            "(SELECT size_total FROM themis_log WHERE lsn = ?), 0))",
            (
                lsn,
                op.kind,
                op.table,
                op.pk,
                op.body,
                record_crc(lsn, op.kind, op.table, op.pk, op.body),
                origin.ts if origin else time.time(),
                origin.epoch if origin else self._epoch,
                size,
                lsn - 1,
            ),
        )
        self._next_lsn = lsn + 1
        return lsn

    @staticmethod
    def _table_exists(conn: sqlite3.Connection, table: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM themis_tables WHERE name = ?", (table,)).fetchone()
            is not None
        )

    def _ensure_table(self, conn: sqlite3.Connection, table: str) -> None:
        if self._table_exists(conn, table):
            return
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {sql_table(table)}("
            # A rowid table: entities are usually larger than the ~1/20 of a page that suits
            # WITHOUT ROWID (measured: 1 KiB rows ran 3x slower there, spilling to overflow).
            "pk TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL, lsn INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO themis_tables(name, created) VALUES (?, ?)", (table, time.time()))

    @staticmethod
    def _index_name(table: str, field: str) -> str:
        return f"ix_{table}_{sha256(field.encode()).hexdigest()[:12]}"

    def _create_index(
        self, conn: sqlite3.Connection, op: Op, origin: LogRecord | None = None
    ) -> int:
        field = check_field(op.pk)
        if conn.execute(
            "SELECT 1 FROM themis_indexes WHERE tbl = ? AND field = ?", (op.table, field)
        ).fetchone():
            raise Conflict(f"an index on {op.table}.{field} exists", code="index_exists")
        self._ensure_table(conn, op.table)
        name = self._index_name(op.table, field)
        conn.execute(f'CREATE INDEX "{name}" ON {sql_table(op.table)}({field_expr(field)})')
        conn.execute(
            "INSERT INTO themis_indexes(tbl, field, sql_name, created) VALUES (?, ?, ?, ?)",
            (op.table, field, name, time.time()),
        )
        return self._log(conn, op, origin)

    def _drop_index(self, conn: sqlite3.Connection, op: Op, origin: LogRecord | None = None) -> int:
        row = conn.execute(
            "SELECT sql_name FROM themis_indexes WHERE tbl = ? AND field = ?", (op.table, op.pk)
        ).fetchone()
        if row is None:
            raise NotFound(f"no index on {op.table}.{op.pk}", code="index_not_found")
        conn.execute(f'DROP INDEX "{row[0]}"')
        conn.execute("DELETE FROM themis_indexes WHERE tbl = ? AND field = ?", (op.table, op.pk))
        return self._log(conn, op, origin)

    # --- reads ----------------------------------------------------------------------------------

    def get(self, table: str, pk: str) -> dict[str, Any] | None:
        check_table(table), check_pk(pk)
        with self._reader() as conn:
            if not self._table_exists(conn, table):
                return None
            row = conn.execute(
                f"SELECT body FROM {sql_table(table)} WHERE pk = ?",
                (pk,),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def has_table(self, table: str) -> bool:
        check_table(table)
        with self._reader() as conn:
            return self._table_exists(conn, table)

    def query(self, query: Query, *, max_results: int, explain: bool = False) -> QueryResult:
        """Run ``query``; at most ``max_results`` rows (``truncated`` says more matched)."""
        limit = min(query.limit, max_results) if query.limit is not None else max_results
        sql, params = build_sql(query, limit + 1)
        with self._reader() as conn:
            if not self._table_exists(conn, query.table):
                return QueryResult(
                    [],
                    [] if query.returns == "entities" else None,
                    False,
                    self._explain(conn, None, []) if explain else None,
                )
            rows = conn.execute(sql, params).fetchall()
            plan = self._explain(conn, sql, params) if explain else None
        truncated = len(rows) > limit and (query.limit is None or query.limit > max_results)
        rows = rows[:limit]
        keys = [f"{query.table}:{row[0]}" for row in rows]
        entities = [json.loads(row[1]) for row in rows] if query.returns == "entities" else None
        return QueryResult(keys, entities, truncated, plan)

    def _explain(self, conn: sqlite3.Connection, sql: str | None, params: list[Any]) -> Explain:
        if sql is None:
            return Explain("scan", (), ("table does not exist",))
        lines = tuple(
            str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        )
        names = {
            name: field
            for name, field in conn.execute("SELECT sql_name, field FROM themis_indexes")
        }
        used = tuple(
            dict.fromkeys(
                field for name, field in names.items() for line in lines if f"INDEX {name}" in line
            )
        )
        if used:
            return Explain("index", used, lines)
        if any("PRIMARY KEY" in line for line in lines) and not any(
            line.startswith("SCAN") for line in lines
        ):
            return Explain("primary_key", (), lines)
        return Explain("scan", (), lines)

    def raw_page(self, table: str, after: str, limit: int) -> list[tuple[str, str]]:
        """(pk, stored JSON text) of up to ``limit`` entities with pk > ``after``."""
        with self._reader() as conn:
            if not self._table_exists(conn, table):
                return []
            rows = conn.execute(
                f"SELECT pk, body FROM {sql_table(table)} WHERE pk > ? ORDER BY pk LIMIT ?",
                (after, limit),
            ).fetchall()
        return [(str(pk), str(body)) for pk, body in rows]

    def export(self, table: str, *, chunk: int = 500) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every entity of ``table`` in key order, read in chunks (keyset pagination) so that
        memory stays flat and no reader is held between chunks."""
        if not self.has_table(table):
            raise NotFound(f"table {table} does not exist", code="table_not_found")
        last = ""
        while True:
            rows = self.raw_page(table, last, chunk)
            for pk, body in rows:
                yield pk, json.loads(body)
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    def index_stats(self) -> list[IndexInfo]:
        with self._reader() as conn:
            indexes = conn.execute(
                "SELECT tbl, field, created FROM themis_indexes ORDER BY tbl, field"
            ).fetchall()
            return [
                IndexInfo(
                    table,
                    field,
                    conn.execute(
                        f"SELECT count(*) FROM {sql_table(table)} "
                        f"WHERE {field_expr(field)} IS NOT NULL"
                    ).fetchone()[0],
                    created,
                )
                for table, field, created in indexes
            ]

    def log_records(self, from_lsn: int = 1, limit: int = 1000) -> list[LogRecord]:
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT {_LOG_COLUMNS} FROM themis_log WHERE lsn >= ? ORDER BY lsn LIMIT ?",
                (from_lsn, limit),
            ).fetchall()
        return [LogRecord(*row) for row in rows]

    def meta(self, key: str) -> str | None:
        """A value written with a ``set_meta`` op."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT value FROM themis_meta WHERE key = ?", (f"user:{key}",)
            ).fetchone()
        return str(row[0]) if row else None

    def meta_items(self, prefix: str) -> dict[str, str]:
        """Every value written with ``set_meta`` whose key starts with ``prefix``."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT key, value FROM themis_meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix) + 5, f"user:{prefix}"),
            ).fetchall()
        return {str(k).removeprefix("user:"): str(v) for k, v in rows}

    def deks(self, table: str | None = None) -> list[tuple[str, int, str, float]]:
        """Wrapped data keys: (table, version, wrapped, created), oldest version first."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT tbl, version, wrapped, created FROM themis_deks "
                "WHERE ? IS NULL OR tbl = ? ORDER BY tbl, version",
                (table, table),
            ).fetchall()
        return [(str(t), int(v), str(w), float(c)) for t, v, w, c in rows]

    def tables(self) -> list[str]:
        with self._reader() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM themis_tables ORDER BY name")]

    def count(self, table: str) -> int:
        if not self.has_table(table):
            return 0
        with self._reader() as conn:
            return int(conn.execute(f"SELECT count(*) FROM {sql_table(table)}").fetchone()[0])

    def last_lsn(self) -> int:
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM themis_meta WHERE key = 'last_lsn'").fetchone()
        return int(row[0]) if row else 0

    # --- health and lifecycle -------------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise StorageError unless the data directory takes a durable write and the writer
        thread is alive (what /health/ready asks)."""
        if self._closed or not self._thread.is_alive():
            raise StorageError("the writer is not running")
        probe = self.data_dir / ".ready-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"data directory not writable: {exc.strerror}") from exc

    def close(self) -> None:
        """Finish every queued write, checkpoint the WAL and close the files."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        while not self._readers.empty():
            self._readers.get_nowait().close()
        os.close(self._lock_fd)
