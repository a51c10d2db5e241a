"""The fsync'd spool of records a failing sink could not take, replayed in order."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from themisdb.audit._sink import AuditRecord, Sink, SinkError


class Spool:
    def __init__(self, directory: Path, sink_name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256(sink_name.encode()).hexdigest()[:16]
        self.path = directory / f"{digest}.ndjson"
        self._lock = threading.Lock()
        self.depth = sum(1 for line in self._read() if line)

    def _read(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def append(self, record: AuditRecord) -> None:
        """Durably keep a record (raises OSError when even the local disk fails)."""
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, (record.line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.depth += 1

    def replay(self, sink: Sink) -> None:
        """Send every spooled record to ``sink`` in order; keep what it did not take."""
        from themisdb.audit.broker import record_from_line  # noqa: PLC0415 - cycle

        with self._lock:
            lines = [line for line in self._read() if line]
            sent = 0
            try:
                for line in lines:
                    sink.write(record_from_line(line))
                    sent += 1
            finally:
                rest = lines[sent:]
                temporary = self.path.with_suffix(".tmp")
                temporary.write_text("".join(line + "\n" for line in rest), encoding="utf-8")
                with open(temporary, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
                self.depth = len(rest)
            if rest:
                raise SinkError(f"{sink.name}: replay stopped with {len(rest)} record(s) left")
