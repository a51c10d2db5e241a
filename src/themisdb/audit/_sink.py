"""The audit sink contract: where chained, signed audit records go.

A sink gets every record in chain order (events and checkpoints). ``write`` either delivers the
record or raises SinkError; it never drops one silently. The broker spools what a failing sink
could not take and replays it, in order, when the sink answers again (a consumer may see a
record twice and deduplicates by ``seq``; it never misses one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from themisdb.errors import ThemisError


class SinkError(ThemisError):
    """The sink could not take a record. The message names the sink, never a secret."""


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit chain.

    ``line`` is the canonical JSON text of the record (no trailing newline): exactly what is
    hashed, signed, stored and sent. ``fields`` is the same record as a mapping; ``kind`` is
    ``"event"`` or ``"checkpoint"``. Events carry seq, time, node, category, action, actor,
    source, resource, outcome, reason, request_id, prev_hash, hash; checkpoints carry seq,
    hash, time, key_id, signature.
    """

    kind: str
    line: str
    fields: Mapping[str, Any]

    @property
    def seq(self) -> int:
        value: int = self.fields["seq"]
        return value


class Sink(Protocol):
    name: str  # e.g. "file:/var/log/themisdb/audit.log", "syslog:tcp://siem:514" (no secrets)

    def write(self, record: AuditRecord) -> None:
        """Deliver one record; raise SinkError when it cannot."""
        ...

    def test_write(self) -> None:
        """The synchronous test write at enable time (raise SinkError when it fails)."""
        ...

    def reopen(self) -> None:
        """SIGHUP: reopen files / reconnect (an external tool rotated the log)."""
        ...

    def close(self) -> None: ...
