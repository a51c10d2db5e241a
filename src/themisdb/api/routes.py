"""The API's endpoints and THE table that declares each one's scope.

Handlers translate HTTP to storage calls and back; they hold no business logic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from themisdb import __version__
from themisdb.api._body import read_json, validate
from themisdb.api.auth import ADMIN, AUTHENTICATED, DATA_READ, DATA_WRITE, Authenticator, Principal
from themisdb.api.metrics import Metrics
from themisdb.api.models import BatchIn, EntityIn, IndexIn, QueryIn
from themisdb.errors import NotFound, Unprocessable
from themisdb.posture import default_probes, evaluate, render
from themisdb.settings import Settings
from themisdb.storage import (
    Op,
    Order,
    Predicate,
    Query,
    Range,
    Storage,
    check_field,
    check_table,
    parse_key,
    put_op,
)
from themisdb.storage import delete_op as _delete_op


@dataclass
class Services:
    """What handlers may use; built once per process by the server."""

    settings: Settings
    storage: Storage
    metrics: Metrics
    auth: Authenticator


@dataclass
class Call:
    request: Request
    principal: Principal
    services: Services

    async def body(self) -> Any:
        return await read_json(self.request, self.services.settings.max_body_bytes)

    async def write(self, ops: list[Op]) -> list[int | None]:
        return await asyncio.wrap_future(self.services.storage.submit(ops))


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    scope: str
    summary: str
    handler: Handler
    body: type[BaseModel] | None = None
    media: str = "application/json"


def _entity_response(key: str, lsn: int | None, status: int = 200) -> JSONResponse:
    return JSONResponse({"key": key, "lsn": lsn}, status_code=status)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Unprocessable(f"{where} must be a JSON object", code="invalid_body")
    return value


# --- entities --------------------------------------------------------------------------------


async def put_entity(call: Call) -> Response:
    table, pk = parse_key(call.request.path_params["key"])
    entity = _object(await call.body(), "the entity")
    (lsn,) = await call.write([put_op(table, pk, entity)])
    return _entity_response(f"{table}:{pk}", lsn)


async def post_entity(call: Call) -> Response:
    item = validate(EntityIn, await call.body())
    table, pk = parse_key(item.key)
    (lsn,) = await call.write([put_op(table, pk, item.blob)])
    return _entity_response(f"{table}:{pk}", lsn)


async def get_entity(call: Call) -> Response:
    table, pk = parse_key(call.request.path_params["key"])
    entity = await run_in_threadpool(call.services.storage.get, table, pk)
    if entity is None:
        raise NotFound(f"no entity {table}:{pk}", code="entity_not_found")
    return JSONResponse({"key": f"{table}:{pk}", "blob": entity})


async def delete_entity(call: Call) -> Response:
    table, pk = parse_key(call.request.path_params["key"])
    (lsn,) = await call.write([_delete_op(table, pk)])
    if lsn is None:
        raise NotFound(f"no entity {table}:{pk}", code="entity_not_found")
    return JSONResponse({"key": f"{table}:{pk}", "deleted": True, "lsn": lsn})


async def batch_put(call: Call) -> Response:
    batch = validate(BatchIn, await call.body())
    ops = []
    for number, item in enumerate(batch.entities):
        try:
            table, pk = parse_key(item.key)
        except Unprocessable as exc:
            raise Unprocessable(f"entities[{number}]: {exc.message}", code=exc.code) from exc
        ops.append(put_op(table, pk, item.blob))
    lsns = await call.write(ops)
    return JSONResponse({"written": len(lsns), "first_lsn": lsns[0], "last_lsn": lsns[-1]})


# --- queries, indexes, export ----------------------------------------------------------------


async def query(call: Call) -> Response:
    body = validate(QueryIn, await call.body())
    table = check_table(body.table)
    order = body.order_by
    limit = body.limit if body.limit is not None else (order.limit if order else None)
    q = Query(
        table=table,
        predicates=tuple(Predicate(p.column, p.value) for p in body.predicates),
        ranges=tuple(
            Range(r.column, r.gte, r.lte, r.include_lower, r.include_upper) for r in body.range
        ),
        order=Order(order.column, order.desc) if order else None,
        limit=limit,
        returns=body.return_,
    )
    result = await run_in_threadpool(
        call.services.storage.query,
        q,
        max_results=call.services.settings.query_max_results,
        explain=body.explain,
    )
    payload: dict[str, Any] = {"table": table, "count": len(result.keys)}
    if result.entities is None:
        payload["keys"] = result.keys
    else:
        payload["entities"] = [
            {"key": k, "blob": e} for k, e in zip(result.keys, result.entities, strict=True)
        ]
    payload["truncated"] = result.truncated
    if result.explain is not None:
        payload["explain"] = {
            "strategy": result.explain.strategy,
            "indexes": list(result.explain.indexes),
            "plan": list(result.explain.plan),
        }
    return JSONResponse(payload)


async def create_index(call: Call) -> Response:
    body = validate(IndexIn, await call.body())
    table, column = check_table(body.table), check_field(body.column)
    (lsn,) = await call.write([Op("create_index", table, column)])
    return JSONResponse({"table": table, "column": column, "lsn": lsn}, status_code=201)


async def drop_index(call: Call) -> Response:
    body = validate(IndexIn, await call.body())
    table, column = check_table(body.table), check_field(body.column)
    (lsn,) = await call.write([Op("drop_index", table, column)])
    return JSONResponse({"table": table, "column": column, "dropped": True, "lsn": lsn})


async def index_stats(call: Call) -> Response:
    stats = await run_in_threadpool(call.services.storage.index_stats)
    return JSONResponse(
        {
            "indexes": [
                {"table": i.table, "column": i.field, "entries": i.entries, "created": i.created}
                for i in stats
            ]
        }
    )


async def export_table(call: Call) -> Response:
    table = check_table(call.request.path_params["table"])
    storage = call.services.storage
    if not await run_in_threadpool(storage.has_table, table):
        raise NotFound(f"table {table} does not exist", code="table_not_found")

    async def lines() -> AsyncIterator[bytes]:
        async for pk, entity in iterate_in_threadpool(storage.export(table)):
            record = {"key": f"{table}:{pk}", "blob": entity}
            yield json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# --- service and admin -----------------------------------------------------------------------


async def root(call: Call) -> Response:
    mode = "production" if call.services.settings.production else "development"
    return JSONResponse({"service": "themisdb", "version": __version__, "mode": mode})


async def openapi(call: Call) -> Response:
    from themisdb.api.openapi import openapi_document  # noqa: PLC0415 - imports ROUTES

    return JSONResponse(openapi_document())


async def posture(call: Call) -> Response:
    report = await run_in_threadpool(evaluate, call.services.settings, default_probes())
    return Response(render.as_json(report), media_type="application/json")


async def effective_config(call: Call) -> Response:
    settings = call.services.settings
    # mode="json" renders every SecretStr as "**********"; sources name files, never values.
    return JSONResponse(settings.model_dump(mode="json", by_alias=True))


ROUTES: tuple[Endpoint, ...] = (
    Endpoint("GET", "/", AUTHENTICATED, "Service name, version and mode", root),
    Endpoint("GET", "/openapi.json", AUTHENTICATED, "This API description", openapi),
    Endpoint(
        "POST", "/entities/_batch", DATA_WRITE, "Write many entities atomically", batch_put, BatchIn
    ),
    Endpoint(
        "POST", "/entities", DATA_WRITE, "Upsert one entity (upstream shape)", post_entity, EntityIn
    ),
    Endpoint("PUT", "/entities/{key:path}", DATA_WRITE, "Upsert the entity table:pk", put_entity),
    Endpoint("GET", "/entities/{key:path}", DATA_READ, "Read the entity table:pk", get_entity),
    Endpoint(
        "DELETE", "/entities/{key:path}", DATA_WRITE, "Delete the entity table:pk", delete_entity
    ),
    Endpoint("POST", "/query", DATA_READ, "Query one table", query, QueryIn),
    Endpoint(
        "POST", "/index/create", ADMIN, "Create a secondary index on a field", create_index, IndexIn
    ),
    Endpoint("POST", "/index/drop", ADMIN, "Drop a secondary index", drop_index, IndexIn),
    Endpoint("GET", "/index/stats", DATA_READ, "Indexes and their entry counts", index_stats),
    Endpoint(
        "GET",
        "/export/{table}",
        DATA_READ,
        "Every entity of a table as NDJSON",
        export_table,
        media="application/x-ndjson",
    ),
    Endpoint("GET", "/admin/security/posture", ADMIN, "The posture rules, evaluated now", posture),
    Endpoint(
        "GET", "/admin/config", ADMIN, "Effective settings, secrets redacted", effective_config
    ),
)
