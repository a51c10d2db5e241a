"""Validation of the names that end up in SQL: tables, primary keys, JSON fields.

Table and field names are embedded in SQL text (SQLite cannot bind identifiers or JSON paths
used by expression indexes), so they are held to a strict alphabet here, once.
"""

from __future__ import annotations

import re

from themisdb.errors import Unprocessable

_TABLE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PK_LENGTH = 512


def check_table(name: str) -> str:
    if not isinstance(name, str) or not _TABLE.fullmatch(name):
        raise Unprocessable(
            "table names are 1-63 characters: a lowercase letter, then lowercase letters, "
            "digits or _",
            code="invalid_table",
        )
    return name


def check_pk(pk: str) -> str:
    if not isinstance(pk, str) or not pk or len(pk) > MAX_PK_LENGTH or _CONTROL.search(pk):
        raise Unprocessable(
            f"primary keys are 1-{MAX_PK_LENGTH} characters without control characters",
            code="invalid_key",
        )
    return pk


def check_field(name: str) -> str:
    if not isinstance(name, str) or not _FIELD.fullmatch(name):
        raise Unprocessable(
            "field names are identifiers ([A-Za-z_][A-Za-z0-9_]*), dot-separated for nested fields",
            code="invalid_field",
        )
    return name


def parse_key(key: str) -> tuple[str, str]:
    """Split an upstream-style ``table:pk`` key (the pk may itself contain ':')."""
    if not isinstance(key, str) or ":" not in key:
        raise Unprocessable("keys are written table:pk", code="invalid_key")
    table, _, pk = key.partition(":")
    return check_table(table), check_pk(pk)


def sql_table(table: str) -> str:
    """The SQLite table holding a ThemisDB table (name already checked)."""
    return f'"e_{table}"'


def json_path(field: str) -> str:
    """The JSON path literal of a checked field name, for json_extract."""
    return "'$." + field + "'"


def field_expr(field: str) -> str:
    """The one expression used both in expression indexes and in queries: they must match
    character for character for SQLite to use the index."""
    return f"json_extract(body, {json_path(field)})"
