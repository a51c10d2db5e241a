"""Storage: SQLite (WAL mode) tables of JSON entities, group-committed writes, logical log."""

from themisdb.storage._names import check_field, check_pk, check_table, parse_key
from themisdb.storage._records import LogRecord, Op, record_crc
from themisdb.storage.engine import (
    DB_FILE,
    IndexInfo,
    Storage,
    delete_op,
    encode_entity,
    lock_data_dir,
    put_op,
    read_meta,
)
from themisdb.storage.query import Explain, Order, Predicate, Query, QueryResult, Range

__all__ = [
    "DB_FILE",
    "Explain",
    "IndexInfo",
    "LogRecord",
    "Op",
    "Order",
    "Predicate",
    "Query",
    "QueryResult",
    "Range",
    "Storage",
    "check_field",
    "check_pk",
    "check_table",
    "delete_op",
    "encode_entity",
    "lock_data_dir",
    "parse_key",
    "put_op",
    "read_meta",
    "record_crc",
]
