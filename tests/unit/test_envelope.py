"""Envelope encryption over real SQLite files and the file key provider."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from themisdb.crypto import EncryptionSchema, Envelope, is_ciphertext
from themisdb.database import REDACTED, Database
from themisdb.errors import BadRequest, Conflict, IntegrityError
from themisdb.keys import LocalKeyProvider
from themisdb.storage import Op, Query, Storage

SCHEMA = EncryptionSchema.model_validate(
    {
        "tables": {
            "customers": {
                "fields": {
                    "ssn": {"encrypt": True, "classification": "pii"},
                    "card": {"encrypt": True, "classification": "restricted"},
                    "email": {"encrypt": False, "classification": "pii"},
                    "city": {"encrypt": False, "classification": "public"},
                }
            }
        }
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Database, Clock, Storage]]:
    storage = Storage(tmp_path / "data")
    provider = LocalKeyProvider("file", tmp_path / "keys", create=True)
    clock = Clock()
    db = Database(storage, Envelope(provider, storage, ttl=300, _clock=clock))
    db.set_schema(SCHEMA)
    yield db, clock, storage
    storage.close()


def write(db: Database, storage: Storage, pk: str, entity: dict[str, object]) -> None:
    storage.write([db.put_op("customers", pk, entity)])


def test_encrypted_fields_are_ciphertext_at_rest_and_plaintext_to_readers(
    parts: tuple[Database, Clock, Storage],
) -> None:
    db, _, storage = parts
    write(db, storage, "c1", {"ssn": "078-05-1120", "card": {"n": 4111}, "city": "Oslo"})
    stored = storage.get("customers", "c1")
    assert stored is not None
    assert is_ciphertext(stored["ssn"])
    assert is_ciphertext(stored["card"])
    assert stored["city"] == "Oslo"
    assert db.get("customers", "c1", pii_read=True) == {
        "ssn": "078-05-1120",
        "card": {"n": 4111},
        "city": "Oslo",
    }


def test_callers_without_pii_read_see_classified_fields_masked(
    parts: tuple[Database, Clock, Storage],
) -> None:
    db, _, storage = parts
    write(db, storage, "c1", {"ssn": "078-05-1120", "email": "a@b.example", "city": "Oslo"})
    assert db.get("customers", "c1", pii_read=False) == {
        "ssn": REDACTED,
        "email": REDACTED,
        "city": "Oslo",
    }


def test_relocated_ciphertext_fails_with_an_integrity_error(
    parts: tuple[Database, Clock, Storage],
) -> None:
    db, _, storage = parts
    write(db, storage, "victim", {"ssn": "078-05-1120"})
    write(db, storage, "attacker", {"ssn": "000-00-0000", "card": "x"})
    stolen = storage.get("customers", "victim")
    assert stolen is not None
    for target, field in (("attacker", "ssn"), ("attacker", "card")):
        entity = storage.get("customers", target)
        assert entity is not None
        entity[field] = stolen["ssn"]
        storage.write([Op("put", "customers", target, json.dumps(entity))])
        with pytest.raises(IntegrityError):
            db.get("customers", target, pii_read=True)


def test_tampered_ciphertext_fails(parts: tuple[Database, Clock, Storage]) -> None:
    db, _, storage = parts
    write(db, storage, "c1", {"ssn": "078-05-1120"})
    entity = storage.get("customers", "c1")
    assert entity is not None
    text = entity["ssn"]
    for bad in (
        text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB"),
        text.replace("$v1$", "$v7$"),
        "$themis$enc$v1$!!",
        "$themis$enc$vX$AAAA",
    ):
        entity["ssn"] = bad
        storage.write([Op("put", "customers", "c1", json.dumps(entity))])
        with pytest.raises(IntegrityError):
            db.get("customers", "c1", pii_read=True)


def test_provider_calls_track_data_keys_not_writes(parts: tuple[Database, Clock, Storage]) -> None:
    db, clock, storage = parts
    envelope = db.envelope
    for i in range(200):
        write(db, storage, f"c{i}", {"ssn": f"{i:09d}"})
    assert envelope.provider_calls == 1  # one wrap: the table's first DEK
    envelope.forget()
    for i in range(200):
        db.get("customers", f"c{i}", pii_read=True)
    assert envelope.provider_calls == 2  # one unwrap, then the cache
    clock.now += 301  # the TTL ends: the next use unwraps again
    db.get("customers", "c0", pii_read=True)
    assert envelope.provider_calls == 3


def test_queries_and_indexes_on_encrypted_fields_are_refused(
    parts: tuple[Database, Clock, Storage],
) -> None:
    db, _, storage = parts
    from themisdb.storage import Predicate

    with pytest.raises(BadRequest, match="encrypted"):
        db.check_query(Query("customers", (Predicate("ssn", "x"),)), pii_read=True)
    with pytest.raises(BadRequest, match="encrypted"):
        db.check_index("customers", "ssn")
    storage.write([Op("create_index", "customers", "city")])
    hardened = SCHEMA.model_copy(deep=True)
    hardened.tables["customers"].fields["city"] = SCHEMA.tables["customers"].fields["ssn"]
    with pytest.raises(Conflict, match="drop the index"):
        db.set_schema(hardened)


def test_rotation_keeps_old_data_readable_and_reencrypt_moves_it(
    parts: tuple[Database, Clock, Storage],
) -> None:
    db, _, storage = parts
    write(db, storage, "old", {"ssn": "111-11-1111"})
    provider = db.envelope.provider
    assert isinstance(provider, LocalKeyProvider)
    assert provider.rotate() == "v2"
    assert db.envelope.rewrap_all() == 1
    write(db, storage, "new", {"ssn": "222-22-2222"})
    old, new = storage.get("customers", "old"), storage.get("customers", "new")
    assert old is not None
    assert new is not None
    assert old["ssn"].startswith("$themis$enc$v1$")
    assert new["ssn"].startswith("$themis$enc$v2$")
    db.envelope.forget()
    assert db.get("customers", "old", pii_read=True) == {"ssn": "111-11-1111"}
    page = db.reencrypt_page("customers", "", 100)
    assert (page.processed, page.rewritten, page.done) == (2, 1, True)
    moved = storage.get("customers", "old")
    assert moved is not None
    assert moved["ssn"].startswith("$themis$enc$v2$")
    assert db.get("customers", "old", pii_read=True) == {"ssn": "111-11-1111"}
    deks = storage.deks("customers")
    assert [v for _, v, _, _ in deks] == [1, 2]


def test_debug_dir_records_plaintext_but_never_key_material(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    provider = LocalKeyProvider("file", tmp_path / "keys", create=True)
    debug = tmp_path / "debug"
    db = Database(storage, Envelope(provider, storage, ttl=300, debug_dir=str(debug)))
    try:
        db.set_schema(SCHEMA)
        storage.write([db.put_op("customers", "c1", {"ssn": "078-05-1120"})])
        db.get("customers", "c1", pii_read=True)
        records = [
            json.loads(line)
            for line in (debug / "encryption-debug.ndjson").read_text().splitlines()
        ]
        assert [r["op"] for r in records] == ["encrypt", "decrypt"]
        assert records[0]["plaintext"] == '"078-05-1120"'
        assert records[0]["ciphertext_header"] == "$themis$enc$v1$"
        master = (tmp_path / "keys" / "master-v1.key").read_bytes()
        text = (debug / "encryption-debug.ndjson").read_bytes()
        assert master.hex().encode() not in text
        assert master not in text
    finally:
        storage.close()
