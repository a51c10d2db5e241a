"""The storage engine's side of replication: applying a leader's records, epochs, retention,
snapshots and the data directory lock. Real SQLite files, no server."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from themisdb.errors import Conflict, ReplicationError, StorageError
from themisdb.replication import Registry
from themisdb.settings import load_settings
from themisdb.storage import LogRecord, Op, Storage, record_crc


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "leader")
    yield store
    store.close()


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "follower")
    yield store
    store.close()


def _moved(record: LogRecord, lsn: int) -> LogRecord:
    """The record at another LSN, with a CRC that matches (a gap, not damage)."""
    crc = record_crc(lsn, record.op, record.table, record.pk, record.payload)
    return dataclasses.replace(record, lsn=lsn, crc32=crc)


def contents(store: Storage, table: str) -> list[tuple[str, str]]:
    return store.raw_page(table, "", 10_000)


def test_applied_records_keep_lsns_and_reproduce_the_data(
    leader: Storage, follower: Storage
) -> None:
    leader.put("t", "a", {"v": 1})
    leader.write([Op("create_index", "t", "v")])
    leader.put("t", "b", {"v": 2})
    leader.delete("t", "a")
    records = leader.log_records()
    assert follower.apply_records(records, epoch=1) == records[-1].lsn
    assert contents(follower, "t") == contents(leader, "t")
    assert [(r.lsn, r.op, r.crc32) for r in follower.log_records()] == [
        (r.lsn, r.op, r.crc32) for r in records
    ]
    assert [i.field for i in follower.index_stats()] == ["v"]


def test_records_sent_again_are_skipped(leader: Storage, follower: Storage) -> None:
    for i in range(5):
        leader.put("t", str(i), {"i": i})
    records = leader.log_records()
    follower.apply_records(records[:3], epoch=1)
    assert follower.apply_records(records, epoch=1) == 5  # 1..3 again, then 4..5
    assert contents(follower, "t") == contents(leader, "t")


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda r: dataclasses.replace(r, payload='{"v":666}'), "corrupt_record"),
        (lambda r: _moved(r, r.lsn + 1), "out_of_order"),
    ],
)
def test_a_damaged_or_misplaced_record_applies_nothing(
    leader: Storage, follower: Storage, damage: object, code: str
) -> None:
    leader.put("t", "a", {"v": 1})
    leader.put("t", "b", {"v": 2})
    first, second = leader.log_records()
    with pytest.raises(ReplicationError) as raised:
        follower.apply_records([first, damage(second)], epoch=1)  # type: ignore[operator]
    assert raised.value.code == code
    assert follower.log_bounds() == (1, 0)  # the whole batch rolled back
    assert contents(follower, "t") == []


def test_a_record_that_does_not_apply_is_divergence(leader: Storage, follower: Storage) -> None:
    leader.put("t", "a", {"v": 1})
    leader.delete("t", "a")
    _, delete = leader.log_records()
    follower.put("t", "x", {"v": 0})  # LSN 1 here is another record
    with pytest.raises(ReplicationError) as raised:
        follower.apply_records([delete], epoch=1)  # deletes a key this node does not have
    assert raised.value.code == "diverged"


def test_a_different_record_at_an_applied_lsn_is_divergence(
    leader: Storage, follower: Storage
) -> None:
    leader.put("t", "a", {"v": 1})
    follower.put("t", "a", {"v": 2})
    with pytest.raises(ReplicationError) as raised:
        follower.apply_records(leader.log_records(), epoch=1)
    assert raised.value.code == "diverged"


def test_client_writes_are_refused_while_replicated_ones_apply(
    leader: Storage, follower: Storage
) -> None:
    refusal = Conflict("read-only replica", code="read_only_replica")
    follower.refuse_writes(refusal)
    with pytest.raises(Conflict):
        follower.put("t", "a", {"v": 1})
    leader.put("t", "a", {"v": 1})
    follower.apply_records(leader.log_records(), epoch=1)
    assert follower.get("t", "a") == {"v": 1}
    follower.refuse_writes(None)
    assert follower.put("t", "b", {"v": 2}) == 2


def test_epochs_are_durable_only_move_forward_and_stamp_the_log(tmp_path: Path) -> None:
    store = Storage(tmp_path / "d")
    store.put("t", "a", {"v": 1})
    store.set_epoch(3)
    store.put("t", "b", {"v": 2})
    with pytest.raises(ReplicationError):
        store.set_epoch(2)
    assert [r.epoch for r in store.log_records()] == [1, 3]
    store.close()
    again = Storage(tmp_path / "d")
    try:
        assert again.epoch == 3
        assert again.record_epoch(1) == 1
        assert again.record_epoch(2) == 3
        assert again.record_epoch(0) == 0
    finally:
        again.close()


def test_a_batch_carries_its_epoch(leader: Storage, follower: Storage) -> None:
    leader.set_epoch(2)
    leader.put("t", "a", {"v": 1})
    follower.apply_records(leader.log_records(), epoch=2)
    assert follower.epoch == 2
    assert follower.log_records()[0].epoch == 2


def test_retention_by_records_and_by_bytes(leader: Storage) -> None:
    for i in range(50):
        leader.put("t", str(i), {"pad": "x" * 100})  # each record ~150 bytes of log
    assert leader.retention_floor(records=10, size=None) == 41
    by_size = leader.retention_floor(records=None, size=1500)
    assert 38 <= by_size <= 43  # ~10 records' worth
    assert leader.retention_floor(records=None, size=10**9) == 1
    assert leader.retention_floor(records=None, size=1) == 50  # the newest record stays


def test_pruning_keeps_what_followers_lack_within_the_bound(tmp_path: Path) -> None:
    store = Storage(tmp_path / "d")
    try:
        for i in range(30):
            store.put("t", str(i), {"i": i})
        settings = load_settings({"THEMIS_WAL_RETENTION": "20"})
        registry = Registry(store, settings.retention)
        assert registry.prune() == 10  # no follower: the bound alone
        assert store.log_bounds() == (11, 30)
        registry.seen("f1", 25)
        registry.prune()
        assert store.log_bounds() == (26, 30)  # what every follower has goes
        assert store.record_epoch(25) == 1  # the newest pruned record is still known
        assert store.record_epoch(24) is None
        assert Registry(store, settings.retention).snapshot()["f1"].applied == 25  # persisted
    finally:
        store.close()


def test_a_snapshot_is_a_consistent_copy_without_the_followers(
    leader: Storage, tmp_path: Path
) -> None:
    for i in range(20):
        leader.put("t", str(i), {"i": i})
    leader.set_epoch(4)
    Registry(leader, (None, None)).seen("f1", 3)
    leader.prune_log(1, {"f1": (3, 0.0)})
    copy = tmp_path / "copy.db"
    assert leader.snapshot(copy) == (20, 4)
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT count(*) FROM themis_followers").fetchone() == (0,)
        assert conn.execute('SELECT count(*) FROM "e_t"').fetchone() == (20,)
    finally:
        conn.close()


def test_one_process_owns_a_data_directory(tmp_path: Path) -> None:
    first = Storage(tmp_path / "d")
    try:
        with pytest.raises(StorageError, match="another process uses the data directory"):
            Storage(tmp_path / "d")
    finally:
        first.close()
    Storage(tmp_path / "d").close()  # released on close


def test_waiting_for_a_commit(leader: Storage) -> None:
    assert not leader.wait_for_lsn(1, 0.05)
    leader.put("t", "a", {"v": 1})
    assert leader.wait_for_lsn(1, 0.05)


def test_log_records_carry_every_field(leader: Storage) -> None:
    leader.put("t", "a", {"v": 1})
    (record,) = leader.log_records()
    assert isinstance(record, LogRecord)
    assert (record.lsn, record.op, record.table, record.pk, record.epoch) == (1, "put", "t", "a", 1)
    assert record.intact()


def test_pruning_deletes_in_chunks_so_client_writes_interleave(leader: Storage) -> None:
    for i in range(100):
        leader.put("t", str(i), {"i": i})
    commits = leader.commits
    assert leader.prune_log(96, {}, chunk=10) == 95
    assert leader.commits - commits == 10  # ten transactions of at most ten records
    assert leader.log_bounds() == (96, 100)
    assert leader.record_epoch(95) == 1
