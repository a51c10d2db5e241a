"""The audit broker: builds events, chains them, signs checkpoints, fans out to sinks, spools
what a sink cannot take and replays it; in ``block`` mode it tells the API to refuse requests
while no sink can write (nothing happens that is not audited).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from themisdb.audit._sink import AuditRecord, Sink, SinkError
from themisdb.audit.chain import GENESIS, Signer, canonical, event_hash
from themisdb.audit.file import FileSink, last_event
from themisdb.audit.spool import Spool

_log = logging.getLogger("themisdb.audit")

CATEGORIES = ("authentication", "authorization", "data_access", "administrative", "security")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_from_line(line: str) -> AuditRecord:
    fields = json.loads(line)
    kind = "checkpoint" if fields.get("type") == "checkpoint" else "event"
    return AuditRecord(kind, line, fields)


@dataclass
class _SinkState:
    sink: Sink
    spool: Spool
    healthy: bool = True
    counted: bool = True  # counts for block mode (a configured output, not the implicit file)
    failures: int = 0
    next_retry: float = 0.0
    backoff: float = 0.5


class AuditBroker:
    """Thread-safe. ``emit`` returns once the event is in every sink or in that sink's spool.

    Group commit, as the storage engine does: ``_lock`` guards the chain (seq, hash) and a
    queue of records in chain order; ``_write_lock`` is held by one writer at a time, which
    takes everything queued and delivers it with one write (one fsync) per sink. Requests
    arriving while a writer fsyncs are written together by the next one, so concurrent
    requests share fsyncs instead of queueing one fsync each. Checkpoints go through the same
    queue (after the events they sign); spool replay holds the write lock (order is kept)."""

    def __init__(
        self,
        sinks: list[Sink],
        *,
        data_dir: Path,
        node: str,
        signer: Signer | None,
        block: bool,
        uncounted: tuple[Sink, ...] = (),
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60,
        on_event: Callable[[str], None] = lambda category: None,
        on_sink_failure: Callable[[str], None] = lambda sink: None,
    ) -> None:
        self.node = node
        self.signer = signer
        self.block = block
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._on_event = on_event
        self._on_sink_failure = on_sink_failure
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[AuditRecord] = []
        self._queued = 0  # records ever queued ...
        self._written = 0  # ... and how many of them are delivered (or spooled)
        spool_dir = data_dir / "audit" / "spool"
        self._sinks = [
            _SinkState(s, Spool(spool_dir, s.name), counted=s not in uncounted) for s in sinks
        ]
        for sink in sinks:
            if isinstance(sink, FileSink):
                sink.checkpoint = self.sign  # the first line of a rotated-in file
        for state in self._sinks:
            if state.spool.depth:
                state.healthy = False  # records from a previous run are waiting
        self.seq, self.last_hash = self._recover()
        self._signed_seq = self.seq
        self.last_checkpoint = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="themis-audit", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def file_sinks(self) -> list[FileSink]:
        return [s.sink for s in self._sinks if isinstance(s.sink, FileSink)]

    def _recover(self) -> tuple[int, str]:
        """Continue the chain where the local file ends (seq 0 and genesis when there is none)."""
        for sink in self.file_sinks:
            for path in reversed(sink.files()):
                last = last_event(path)
                if last is not None:
                    return last
        return 0, GENESIS

    def start(self) -> None:
        """The synchronous test write of every sink (Vault's rule: a sink that cannot take a
        record at enable time is reported now), then the checkpoint/retry thread."""
        for state in self._sinks:
            try:
                state.sink.test_write()
            except SinkError as exc:
                _log.error("audit sink %s failed its test write: %s", state.sink.name, exc)
                self._failed(state)
        if self.signer is not None and self.seq:
            # Mark the restart and cover a tail that a crash may have left unsigned (those
            # events were protected by the hash chain alone until now).
            self.checkpoint()
        self._thread.start()

    def close(self) -> None:
        """A final checkpoint, then close every sink."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.signer is not None and self.seq > self._signed_seq:
            self.checkpoint()
        for state in self._sinks:
            state.sink.close()

    def reopen(self) -> None:
        """SIGHUP: every sink reopens its file or connection."""
        for state in self._sinks:
            try:
                state.sink.reopen()
            except SinkError as exc:
                _log.error("audit sink %s failed to reopen: %s", state.sink.name, exc)
                self._failed(state)

    # --- state ----------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """At least one configured sink takes records now (block mode refuses requests
        otherwise). The local file the broker adds on its own does not count: with a SIEM
        down, "audited" would otherwise mean "only on this host"."""
        return any(state.healthy for state in self._sinks if state.counted)

    def spool_depths(self) -> dict[str, int]:
        return {s.sink.name: s.spool.depth for s in self._sinks}

    def checkpoint_age(self) -> float:
        return time.monotonic() - self.last_checkpoint

    # --- emitting -------------------------------------------------------------------------------

    def emit_many(self, events: list[dict[str, Any]]) -> int:
        """Several events (one request's) chained in order and written together; returns the
        seq of the last one once they are in every sink or its spool."""
        if not events:
            return self.seq
        with self._lock:
            records = []
            for event in events:
                if event["category"] not in CATEGORIES:
                    raise ValueError(event["category"])
                fields: dict[str, Any] = {
                    "seq": self.seq + 1,
                    "time": now_rfc3339(),
                    "node": self.node,
                    "actor": "-",
                    "source": "-",
                    "resource": None,
                    "reason": None,
                    "request_id": None,
                    **event,
                    "prev_hash": self.last_hash,
                }
                fields["hash"] = event_hash(fields)
                records.append(AuditRecord("event", canonical(fields), fields))
                self.seq, self.last_hash = fields["seq"], fields["hash"]
            last = self.seq
            position = self._enqueue(records)
            due = self.seq - self._signed_seq >= self.checkpoint_every
        self._write(position)
        for record in records:
            self._on_event(record.fields["category"])
        if due and self.signer is not None:
            self.checkpoint(only_if_due=True)
        return last

    def _enqueue(self, records: list[AuditRecord]) -> int:
        """Queue ``records`` (under ``_lock``); returns the position _write must reach."""
        self._queue.extend(records)
        self._queued += len(records)
        return self._queued

    def _write(self, position: int) -> None:
        """Return once every record queued up to ``position`` is delivered or spooled,
        writing (with whatever else is queued by then) unless another writer already did."""
        with self._write_lock:
            if self._written >= position:
                return  # a writer took ours along while we waited
            with self._lock:
                batch, self._queue = self._queue, []
                upto = self._queued
            self._deliver_many(batch)
            self._written = upto

    def emit(
        self,
        category: str,
        action: str,
        *,
        outcome: str,
        actor: str = "-",
        source: str = "-",
        resource: Any = None,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> int:
        """One event; returns its seq."""
        return self.emit_many(
            [
                {
                    "category": category,
                    "action": action,
                    "outcome": outcome,
                    "actor": actor,
                    "source": source,
                    "resource": resource,
                    "reason": reason,
                    "request_id": request_id,
                }
            ]
        )

    def checkpoint(self, *, only_if_due: bool = False) -> AuditRecord | None:
        """Sign the chain head now and deliver the checkpoint to every sink. ``only_if_due``:
        unless another thread has just signed (several requests can find one due at once)."""
        if self.signer is None:
            return None
        with self._lock:
            if only_if_due and self.seq - self._signed_seq < self.checkpoint_every:
                return None
            record = self._checkpoint_record()
            position = self._enqueue([record])  # after every event it signs
            self._signed_seq = self.seq
            self.last_checkpoint = time.monotonic()
        self._write(position)
        return record

    def _checkpoint_record(self) -> AuditRecord:
        record = self.sign(self.seq, self.last_hash)
        assert record is not None
        return record

    def sign(self, seq: int, chain_hash: str) -> AuditRecord | None:
        """A checkpoint of (seq, hash), for a file sink that rotates (called by its writer)."""
        if self.signer is None:
            return None
        fields = self.signer.checkpoint(seq, chain_hash, now_rfc3339())
        return AuditRecord("checkpoint", canonical(fields), fields)

    def _deliver_many(self, records: list[AuditRecord]) -> None:
        for state in self._sinks:
            sent = 0
            if state.healthy:
                try:
                    write_many = getattr(state.sink, "write_many", None)
                    if write_many is not None:
                        write_many(records)
                        sent = len(records)
                    else:
                        for record in records:
                            state.sink.write(record)
                            sent += 1
                    continue
                except SinkError as exc:
                    _log.error("audit sink %s failed: %s", state.sink.name, exc)
                    self._failed(state)
                    sent = 0 if write_many is not None else sent
            # Keep order: once a sink has a spool, new records queue behind it. (A record a
            # batch may have half-written is spooled again: consumers deduplicate by seq.)
            for record in records[sent:]:
                state.spool.append(record)

    def _failed(self, state: _SinkState) -> None:
        state.healthy = False
        state.failures += 1
        state.next_retry = time.monotonic() + state.backoff
        self._on_sink_failure(state.sink.name)

    # --- background: checkpoints on time, replay of spools --------------------------------------

    def _background(self) -> None:
        while not self._stop.wait(0.25):
            if (
                self.signer is not None
                and self.seq > self._signed_seq
                and self.checkpoint_age() >= self.checkpoint_seconds
            ):
                self.checkpoint()
            for state in self._sinks:
                if not state.healthy and time.monotonic() >= state.next_retry:
                    self._retry(state)

    def _retry(self, state: _SinkState) -> None:
        with self._write_lock:  # new records wait while the spool drains: order is kept
            try:
                state.sink.reopen()
                state.spool.replay(state.sink)
            except (SinkError, OSError) as exc:
                state.backoff = min(state.backoff * 2, 30.0)
                state.next_retry = time.monotonic() + state.backoff
                _log.warning("audit sink %s still failing: %s", state.sink.name, exc)
                return
            state.healthy = True
            state.backoff = 0.5
        _log.warning("audit sink %s recovered; spool replayed", state.sink.name)

    # --- reading back (GET /api/audit) ----------------------------------------------------------

    def read_events(self) -> Iterator[dict[str, Any]]:
        """Events from the first file sink, oldest first."""
        for sink in self.file_sinks[:1]:
            for path in sink.files():
                yield from _events(path)


def _events(path: Path) -> Iterable[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn line (crash mid-write): not an event
                if isinstance(record, dict) and record.get("type") != "checkpoint":
                    yield record
    except FileNotFoundError:
        return
