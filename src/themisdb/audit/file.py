"""The file audit sink: JSON lines, rotation by size and age, fsync policy.

Rotation renames the current file to ``<path>.<UTC time>-<first seq>`` and starts a new one
whose first line is a signed checkpoint of the chain so far, so the chain continues across
files and any suffix of the file set verifies. Files are never deleted here: retention of an
audit trail belongs to the archive (WORM storage), not to the process being audited.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from themisdb.audit._sink import AuditRecord, SinkError
from themisdb.settings import FileOutput

_log = logging.getLogger("themisdb.audit")


class FileSink:
    def __init__(self, output: FileOutput, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(output.path)
        self.name = f"file:{self.path}"
        self.max_size = int(output.rotation.max_size)
        self.max_age = output.rotation.max_age * 86400
        self.fsync = output.fsync == "always"
        # Set by the broker: signs (seq, hash) of the last event this file holds; the result
        # is the first line of the next file, so the chain continues across files.
        self.checkpoint: Callable[[int, str], AuditRecord | None] = lambda seq, h: None
        self._last: tuple[int, str] | None = None  # (seq, hash) of the file's last event
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        st = os.fstat(self._fd)
        self._size = _heal_torn_tail(self._fd, self.path) if st.st_size else 0
        # The age of a file is that of its first record (ctime changes with every write).
        self._opened = _first_time(self.path) if st.st_size else self._clock()
        if self._last is None:
            # The newest event of the file set, for naming the next rotated file and for the
            # checkpoint that starts it (the current file may hold only checkpoints).
            for path in reversed(self.files()):
                self._last = last_event(path)
                if self._last is not None:
                    break

    def _append(self, line: str) -> None:
        assert self._fd is not None
        data = (line + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(28, "short write")
        self._size += written

    def write(self, record: AuditRecord) -> None:
        self.write_many([record])

    def write_many(self, records: list[AuditRecord]) -> None:
        """Append the records, then one fsync (with the fsync policy "always")."""
        with self._lock:
            try:
                if self._fd is None:
                    self._open()
                for record in records:
                    due = self._size >= self.max_size or (
                        self._clock() - self._opened >= self.max_age
                    )
                    if self._size and due:
                        if self._holds_events():
                            self._rotate()
                        else:
                            # Only checkpoints here (a rotation just happened): rotating would
                            # give it the previous file's name. Its age starts anew instead.
                            self._opened = self._clock()
                    self._append(record.line)
                    if record.kind == "event":
                        self._last = (record.seq, str(record.fields["hash"]))
                if self.fsync:
                    assert self._fd is not None
                    os.fsync(self._fd)
            except OSError as exc:
                self._close()
                raise SinkError(f"{self.name}: {exc.strerror or exc}") from exc

    def _rotate(self) -> None:
        if self.fsync and self._fd is not None:
            os.fsync(self._fd)  # what this batch appended before the rotation
        self._close()
        # Named after the last seq it holds, zero-padded: name order is chain order. link +
        # unlink, not rename: an existing audit file is never overwritten.
        last = self._last[0] if self._last is not None else 0
        target = self.path.with_name(f"{self.path.name}.{last:012d}")
        os.link(self.path, target)
        os.unlink(self.path)
        self._open()
        self._opened = self._clock()
        carried = self.checkpoint(*self._last) if self._last is not None else None
        if carried is not None:
            self._append(carried.line)

    def _holds_events(self) -> bool:
        last = last_event(self.path)
        return last is not None

    def files(self) -> list[Path]:
        """Rotated files (oldest first), then the current one."""
        rotated = sorted(self.path.parent.glob(self.path.name + ".*"))
        return [*rotated, self.path] if self.path.exists() else rotated

    def test_write(self) -> None:
        with self._lock:
            try:
                if self._fd is None:
                    self._open()
                assert self._fd is not None
                os.fsync(self._fd)
            except OSError as exc:
                self._close()
                raise SinkError(f"{self.name}: {exc.strerror or exc}") from exc

    def reopen(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close()


def _first_time(path: Path) -> float:
    """When the first record of ``path`` was written (its ``time``), else the file's mtime."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = json.loads(handle.readline())
        return datetime.fromisoformat(str(first["time"]).replace("Z", "+00:00")).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return path.stat().st_mtime


def last_event(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the last event in ``path``."""
    last = None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("type") != "checkpoint" and "seq" in record:
                last = (int(record["seq"]), str(record["hash"]))
    return last


def _heal_torn_tail(fd: int, path: Path) -> int:
    """A file that does not end in a newline has a torn last record (a crash or a full disk
    mid-write; that record was never acknowledged). Cut it off so the next record starts on a
    line of its own; return the new size."""
    size = os.fstat(fd).st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return size
        handle.seek(0)
        keep = handle.read().rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    _log.warning("audit file %s ended in a torn record: %d byte(s) cut off", path, size - keep)
    return keep
