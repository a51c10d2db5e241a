"""The two records of the storage engine: a change to make (``Op``) and a change made, as the
logical log holds it and replication ships it (``LogRecord``)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

OpKind = Literal["put", "delete", "create_index", "drop_index", "set_meta", "put_dek"]


@dataclass(frozen=True)
class Op:
    """One change. For index operations ``pk`` holds the field name; for set_meta the meta
    key (``table`` is ``_meta``); for put_dek the DEK version (``body``: the wrapped key)."""

    kind: OpKind
    table: str
    pk: str
    body: str | None = None  # canonical JSON text of the entity, for put
    # put only: apply only if the stored body is still exactly this (read-modify-write
    # without losing a concurrent update); otherwise the op changes nothing (LSN None).
    expect: str | None = None


@dataclass(frozen=True)
class LogRecord:
    lsn: int
    op: str
    table: str
    pk: str
    payload: str | None
    crc32: int
    ts: float
    epoch: int = 1

    def intact(self) -> bool:
        return record_crc(self.lsn, self.op, self.table, self.pk, self.payload) == self.crc32


def record_crc(lsn: int, op: str, table: str, pk: str, payload: str | None) -> int:
    head = f"{lsn}\x1f{op}\x1f{table}\x1f{pk}\x1f".encode()
    return zlib.crc32(head + (payload or "").encode())
