"""The database facade: storage plus the encryption schema, envelope encryption and masking.

The API calls this, never storage directly for entity data, so that every path (single writes,
batches, reads, queries, exports, re-encryption) applies the same field policy. Methods are
synchronous (the key provider may block on an HSM or on Vault): the API runs them in threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from themisdb.crypto import EncryptionSchema, Envelope, is_ciphertext
from themisdb.errors import BadRequest, Conflict, Forbidden
from themisdb.redaction import PiiRuntime
from themisdb.storage import Op, Query, QueryResult, Storage, delete_op, put_op

SCHEMA_KEY = "encryption_schema"
MASTER_KEY_SINCE = "master_key_since:"  # + provider:key id -> when this database first used it
REDACTED = "[redacted]"


@dataclass(frozen=True)
class ReencryptPage:
    processed: int
    rewritten: int
    last: str
    done: bool


class Database:
    def __init__(self, storage: Storage, envelope: Envelope, pii: PiiRuntime | None = None) -> None:
        self.storage = storage
        self.envelope = envelope
        self.pii = pii
        self.schema = EncryptionSchema()
        self.reload_schema()

    def reload_schema(self) -> None:
        """Read the encryption schema from storage (a follower, after the leader changed it)."""
        stored = self.storage.meta(SCHEMA_KEY)
        self.schema = EncryptionSchema.model_validate_json(stored) if stored else EncryptionSchema()

    # --- schema ---------------------------------------------------------------------------------

    def set_schema(self, schema: EncryptionSchema) -> int:
        indexed = {(i.table, i.field.split(".", 1)[0]) for i in self.storage.index_stats()}
        clashes = sorted(
            f"{table}.{field}"
            for table in schema.tables
            for field in schema.encrypted_fields(table)
            if (table, field) in indexed
        )
        if clashes:
            raise Conflict(
                f"drop the index on {', '.join(clashes)} first: encrypted fields are not indexed",
                code="indexed_field",
            )
        (lsn,) = self.storage.write([Op("set_meta", "_meta", SCHEMA_KEY, schema.model_dump_json())])
        self.schema = schema
        assert lsn is not None
        return lsn

    def master_key_since(self) -> float | None:
        """When this database started using the current master key version (None: unknown)."""
        provider = self.envelope.provider
        noted = self.storage.meta(f"{MASTER_KEY_SINCE}{provider.name}:{provider.current_key_id()}")
        return float(noted) if noted is not None else None

    def note_master_key(self) -> None:
        """Record when this database started using the current master key version (the age
        that the keys.master_key_age posture rule compares with THEMIS_KEY_ROTATION_DAYS)."""
        provider = self.envelope.provider
        key = f"{MASTER_KEY_SINCE}{provider.name}:{provider.current_key_id()}"
        # A follower records nothing: its leader's record of the same key replicates here.
        if self.storage.refusal is None and self.storage.meta(key) is None:
            self.storage.write([Op("set_meta", "_meta", key, str(time.time()))])

    # --- writes (prepare ops; the caller submits them) ------------------------------------------

    def put_op(self, table: str, pk: str, entity: dict[str, Any]) -> Op:
        encrypted = self.schema.encrypted_fields(table)
        if self.pii is not None:  # strict mode refuses here, before anything is encrypted
            self.pii.check_write(table, pk, entity, encrypted)
        sealed = self.envelope.encrypt_fields(table, pk, entity, encrypted)
        return put_op(table, pk, sealed)

    def delete_op(self, table: str, pk: str) -> Op:
        return delete_op(table, pk)

    # --- reads ----------------------------------------------------------------------------------

    def present(
        self, table: str, pk: str, stored: dict[str, Any], *, pii_read: bool
    ) -> dict[str, Any]:
        """Decrypt; for callers without pii:read, mask the fields classified pii/restricted
        and every detected pii/restricted value elsewhere."""
        entity = self.envelope.decrypt_fields(table, pk, stored)
        if pii_read:
            return entity
        hidden = self.schema.sensitive_fields(table) & entity.keys()
        shown = {k: (REDACTED if k in hidden else v) for k, v in entity.items()}
        return self.pii.mask_result(shown) if self.pii is not None else shown

    def get(self, table: str, pk: str, *, pii_read: bool) -> dict[str, Any] | None:
        stored = self.storage.get(table, pk)
        return None if stored is None else self.present(table, pk, stored, pii_read=pii_read)

    def check_query(self, query: Query, *, pii_read: bool) -> None:
        columns = [p.column for p in query.predicates] + [r.column for r in query.ranges]
        if query.order is not None:
            columns.append(query.order.column)
        for column in columns:
            if self.schema.covers(query.table, column):
                raise BadRequest(
                    f"{column} is encrypted at rest and cannot be queried or sorted on",
                    code="encrypted_field",
                )
            top = column.split(".", 1)[0]
            if not pii_read and top in self.schema.sensitive_fields(query.table):
                # Predicates on a masked field would reveal it one comparison at a time.
                raise Forbidden(
                    f"{column} is classified; querying it needs scope pii:read",
                    code="insufficient_scope",
                )

    def check_index(self, table: str, column: str) -> None:
        if self.schema.covers(table, column):
            raise BadRequest(
                f"{column} is encrypted at rest and cannot be indexed", code="encrypted_field"
            )

    def query(
        self, query: Query, *, max_results: int, explain: bool, pii_read: bool
    ) -> tuple[QueryResult, list[dict[str, Any]] | None]:
        self.check_query(query, pii_read=pii_read)
        result = self.storage.query(query, max_results=max_results, explain=explain)
        if result.entities is None:
            return result, None
        shown = [
            self.present(query.table, key.partition(":")[2], entity, pii_read=pii_read)
            for key, entity in zip(result.keys, result.entities, strict=True)
        ]
        return result, shown

    def export(self, table: str, *, pii_read: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        for pk, stored in self.storage.export(table):
            yield pk, self.present(table, pk, stored, pii_read=pii_read)

    # --- key rotation ---------------------------------------------------------------------------

    def reencrypt_page(self, table: str, after: str, limit: int) -> ReencryptPage:
        """Rewrite up to ``limit`` entities after ``after`` so that every encrypted field is
        sealed under the table's newest DEK (and plaintext left in newly encrypted fields gets
        encrypted). Conditional writes: an entity changed meanwhile is left to its new write."""
        fields = self.schema.encrypted_fields(table)
        version = self.envelope.ensure_dek(table) if fields else None
        rows = self.storage.raw_page(table, after, limit)
        ops: list[Op] = []
        for pk, body in rows:
            stored = json.loads(body)
            stale = [
                f
                for f, v in stored.items()
                if (is_ciphertext(v) and not v.startswith(f"$themis$enc$v{version}$"))
                or (f in fields and not is_ciphertext(v))
            ]
            if not stale:
                continue
            plain = self.envelope.decrypt_fields(table, pk, stored)
            sealed = self.envelope.encrypt_fields(table, pk, plain, fields)
            op = put_op(table, pk, sealed)
            ops.append(Op(op.kind, op.table, op.pk, op.body, expect=body))
        written = [lsn for lsn in self.storage.write(ops) if lsn is not None] if ops else []
        last = rows[-1][0] if rows else after
        return ReencryptPage(len(rows), len(written), last, len(rows) < limit)
