"""The storage engine on real SQLite files: writes, group commit, the logical log, queries."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from themisdb.errors import Conflict, NotFound, StorageError, Unprocessable
from themisdb.storage import (
    DB_FILE,
    Op,
    Order,
    Predicate,
    Query,
    Range,
    Storage,
    delete_op,
    encode_entity,
    parse_key,
    put_op,
)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "data")
    yield store
    store.close()


def people(storage: Storage, count: int = 50) -> None:
    storage.write(
        [
            put_op(
                "people",
                f"p{i:03d}",
                {"name": f"n{i}", "age": i, "city": ["Oslo", "Rome"][i % 2], "vip": i % 10 == 0},
            )
            for i in range(count)
        ]
    )


def test_put_get_delete(storage: Storage) -> None:
    assert storage.put("people", "a", {"name": "Ada", "tags": ["x"], "n": {"deep": 1}}) == 1
    assert storage.get("people", "a") == {"name": "Ada", "tags": ["x"], "n": {"deep": 1}}
    assert storage.put("people", "a", {"name": "Ada L."}) == 2  # upsert replaces
    assert storage.get("people", "a") == {"name": "Ada L."}
    assert storage.delete("people", "a") == 3
    assert storage.get("people", "a") is None
    assert storage.delete("people", "a") is None  # nothing changed: no log record
    assert storage.last_lsn() == 3
    assert storage.get("nosuchtable", "a") is None


def test_keys_may_contain_colons_and_unicode(storage: Storage) -> None:
    assert parse_key("orders:2026:eu:ø") == ("orders", "2026:eu:ø")
    storage.put("orders", "2026:eu:ø", {"ok": True})
    assert storage.get("orders", "2026:eu:ø") == {"ok": True}


@pytest.mark.parametrize("key", ["nocolon", "Upper:1", "1abc:x", "t:", "t:a\x00b", "x" * 70 + ":1"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(Unprocessable):
        parse_key(key)


def test_batch_is_atomic_and_the_log_stays_gap_free(storage: Storage) -> None:
    storage.write([Op("create_index", "people", "age")])
    ops = [put_op("people", "x1", {"age": 1}), Op("create_index", "people", "age")]
    with pytest.raises(Conflict):
        storage.write(ops)  # the second op fails: the first must not stay
    assert storage.get("people", "x1") is None
    assert storage.put("people", "x2", {"age": 2}) == 2  # LSN 2 was given back
    records = storage.log_records()
    assert [r.lsn for r in records] == [1, 2]
    assert all(r.intact() for r in records)


def test_concurrent_requests_are_group_committed_and_each_acknowledged(storage: Storage) -> None:
    futures = [storage.submit([put_op("t", f"k{i}", {"i": i})]) for i in range(500)]
    lsns = [f.result(timeout=30)[0] for f in futures]
    assert sorted(lsns) == list(range(1, 501))  # type: ignore[type-var]
    assert storage.committed_requests == 500
    assert storage.commits < 500  # requests that queued during a commit shared the next one
    records = storage.log_records(limit=1000)
    assert [r.lsn for r in records] == list(range(1, 501))


def test_one_failing_request_does_not_take_its_group_down(storage: Storage) -> None:
    storage.write([Op("create_index", "t", "f")])
    barrier = threading.Event()
    results: list[object] = []

    def writer(ops: list[Op]) -> None:
        barrier.wait()
        try:
            results.append(storage.write(ops))
        except Conflict as exc:
            results.append(exc)

    threads = [
        threading.Thread(target=writer, args=([put_op("t", f"ok{i}", {"f": i})],))
        for i in range(20)
    ] + [threading.Thread(target=writer, args=([Op("create_index", "t", "f")],))]
    for t in threads:
        t.start()
    barrier.set()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert all(storage.get("t", f"ok{i}") == {"f": i} for i in range(20))
    assert [r.lsn for r in storage.log_records()] == list(range(1, 22))


def test_log_record_matches_the_change(storage: Storage) -> None:
    storage.put("people", "a", {"b": 2, "a": 1})
    storage.delete("people", "a")
    put, delete = storage.log_records()
    assert (put.op, put.table, put.pk, put.payload) == ("put", "people", "a", '{"a":1,"b":2}')
    assert (delete.op, delete.payload) == ("delete", None)
    assert put.intact()
    assert delete.intact()


def test_data_and_log_survive_reopening(tmp_path: Path) -> None:
    first = Storage(tmp_path)
    first.put("t", "k", {"v": 1})
    first.close()
    second = Storage(tmp_path)
    try:
        assert second.get("t", "k") == {"v": 1}
        assert second.put("t", "k2", {"v": 2}) == 2  # LSNs continue
    finally:
        second.close()


def test_plaintext_layout_is_one_sqlite_file_in_wal_mode(storage: Storage) -> None:
    storage.put("t", "k", {"v": 1})
    conn = sqlite3.connect(storage.data_dir / DB_FILE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_equality_range_order_limit(storage: Storage) -> None:
    people(storage)
    q = Query(
        "people",
        predicates=(Predicate("city", "Rome"),),
        ranges=(Range("age", gte=10, lte=20, include_lower=False, include_upper=True),),
        order=Order("age", desc=True),
        limit=3,
        returns="entities",
    )
    result = storage.query(q, max_results=100)
    assert result.keys == ["people:p019", "people:p017", "people:p015"]
    assert result.entities is not None
    assert [e["age"] for e in result.entities] == [19, 17, 15]
    assert not result.truncated
    booleans = storage.query(Query("people", (Predicate("vip", True),)), max_results=100)
    assert booleans.keys == [f"people:p{i:03d}" for i in range(0, 50, 10)]
    lower_only = storage.query(Query("people", ranges=(Range("age", gte=48),)), max_results=100)
    assert lower_only.keys == ["people:p048", "people:p049"]


def test_results_beyond_the_maximum_are_truncated(storage: Storage) -> None:
    people(storage, 30)
    result = storage.query(Query("people"), max_results=10)
    assert len(result.keys) == 10
    assert result.truncated
    assert not storage.query(Query("people", limit=5), max_results=10).truncated


def test_explain_shows_whether_an_index_served_the_query(storage: Storage) -> None:
    people(storage)
    q = Query("people", predicates=(Predicate("city", "Oslo"),))
    before = storage.query(q, max_results=100, explain=True)
    assert before.explain is not None
    assert before.explain.strategy == "scan"
    storage.write([Op("create_index", "people", "city")])
    after = storage.query(q, max_results=100, explain=True)
    assert after.explain is not None
    assert after.explain.strategy == "index"
    assert after.explain.indexes == ("city",)
    assert after.keys == before.keys  # same answer either way
    storage.write([Op("drop_index", "people", "city")])
    dropped = storage.query(q, max_results=100, explain=True)
    assert dropped.explain is not None
    assert dropped.explain.strategy == "scan"


def test_range_uses_the_index_too(storage: Storage) -> None:
    people(storage)
    storage.write([Op("create_index", "people", "age")])
    q = Query("people", ranges=(Range("age", gte=5, lte=7),))
    result = storage.query(q, max_results=100, explain=True)
    assert result.explain is not None
    assert result.explain.strategy == "index"
    assert result.keys == ["people:p005", "people:p006", "people:p007"]


def test_mixed_range_bounds_are_refused(storage: Storage) -> None:
    people(storage)
    with pytest.raises(Unprocessable, match="both bounds"):
        storage.query(Query("people", ranges=(Range("age", gte=1, lte="z"),)), max_results=10)


def test_index_errors_and_stats(storage: Storage) -> None:
    people(storage, 20)
    storage.write([Op("create_index", "people", "city")])
    with pytest.raises(Conflict):
        storage.write([Op("create_index", "people", "city")])
    with pytest.raises(NotFound):
        storage.write([Op("drop_index", "people", "nosuch")])
    (stats,) = storage.index_stats()
    assert (stats.table, stats.field, stats.entries) == ("people", "city", 20)


def test_export_reads_every_entity_in_key_order_across_chunks(storage: Storage) -> None:
    people(storage, 45)
    exported = list(storage.export("people", chunk=7))
    assert [pk for pk, _ in exported] == [f"p{i:03d}" for i in range(45)]
    assert exported[3][1]["age"] == 3
    with pytest.raises(NotFound):
        list(storage.export("nosuch"))


def test_encoding_is_canonical() -> None:
    assert encode_entity({"b": 1, "a": "ø"}) == '{"a":"ø","b":1}'
    assert json.loads(encode_entity({"x": [1, 2]})) == {"x": [1, 2]}


def test_closed_storage_refuses_work(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    store.close()
    with pytest.raises(StorageError):
        store.write([delete_op("t", "k")])
    with pytest.raises(StorageError):
        store.get("t", "k")
    with pytest.raises(StorageError):
        store.check_writable()


def test_unusable_data_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot"):
        Storage(blocker / "data")
