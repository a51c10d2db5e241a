"""Queries over one table: equality predicates, ranges, order, limit; and their SQL.

Values are always bound parameters; only checked names are embedded (see _names.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from themisdb.errors import Unprocessable
from themisdb.storage._names import check_field, check_table, field_expr, sql_table

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Predicate:
    column: str
    value: Scalar


@dataclass(frozen=True)
class Range:
    column: str
    gte: Scalar = None
    lte: Scalar = None
    include_lower: bool = True
    include_upper: bool = True


@dataclass(frozen=True)
class Order:
    column: str
    desc: bool = False


@dataclass(frozen=True)
class Query:
    table: str
    predicates: tuple[Predicate, ...] = ()
    ranges: tuple[Range, ...] = ()
    order: Order | None = None
    limit: int | None = None
    returns: Literal["keys", "entities"] = "keys"


@dataclass(frozen=True)
class Explain:
    strategy: Literal["index", "scan", "primary_key"]
    indexes: tuple[str, ...]  # fields whose index served the query
    plan: tuple[str, ...]  # SQLite's EXPLAIN QUERY PLAN lines, verbatim


@dataclass(frozen=True)
class QueryResult:
    keys: list[str]
    entities: list[dict[str, object]] | None
    truncated: bool
    explain: Explain | None = field(default=None)


def _bindable(value: Scalar, column: str) -> Scalar:
    if isinstance(value, bool):
        return int(value)  # json_extract yields 1/0 for JSON true/false
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise Unprocessable(
        f"{column}: only strings, numbers, booleans and null can be compared", code="invalid_query"
    )


def _same_kind(a: Scalar, b: Scalar) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b)


def build_sql(query: Query, limit: int) -> tuple[str, list[Scalar]]:
    """SQL and parameters for ``query``; ``limit`` is the number of rows to fetch."""
    check_table(query.table)
    where: list[str] = []
    params: list[Scalar] = []
    for predicate in query.predicates:
        expr = field_expr(check_field(predicate.column))
        if predicate.value is None:
            where.append(f"{expr} IS NULL")
        else:
            where.append(f"{expr} = ?")
            params.append(_bindable(predicate.value, predicate.column))
    for rng in query.ranges:
        expr = field_expr(check_field(rng.column))
        if rng.gte is None and rng.lte is None:
            raise Unprocessable(f"range on {rng.column} needs gte or lte", code="invalid_query")
        if rng.gte is not None and rng.lte is not None and not _same_kind(rng.gte, rng.lte):
            raise Unprocessable(
                f"range on {rng.column}: both bounds must be numbers or both strings",
                code="invalid_query",
            )
        if rng.gte is not None:
            where.append(f"{expr} {'>=' if rng.include_lower else '>'} ?")
            params.append(_bindable(rng.gte, rng.column))
        if rng.lte is not None:
            where.append(f"{expr} {'<=' if rng.include_upper else '<'} ?")
            params.append(_bindable(rng.lte, rng.column))
    columns = "pk" if query.returns == "keys" else "pk, body"
    sql = f"SELECT {columns} FROM {sql_table(query.table)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if query.order is not None:
        expr = field_expr(check_field(query.order.column))
        direction = "DESC" if query.order.desc else "ASC"
        sql += f" ORDER BY {expr} {direction}, pk {direction}"
    else:
        sql += " ORDER BY pk"
    sql += " LIMIT ?"
    params.append(limit)
    return sql, params
