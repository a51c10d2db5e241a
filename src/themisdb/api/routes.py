"""The API's endpoints and THE table that declares each one's scope.

Handlers translate HTTP to storage calls and back; they hold no business logic.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from themisdb import __version__
from themisdb.access import (
    ADMIN,
    ANONYMOUS,
    AUDIT_READ,
    AUTHENTICATED,
    DATA_READ,
    DATA_WRITE,
    KEYS_ADMIN,
    PII_READ,
    ApiKeyStore,
    Limits,
    Principal,
    SessionStore,
)
from themisdb.api._body import read_json, validate
from themisdb.api.auth import Authenticator
from themisdb.api.metrics import Metrics
from themisdb.api.models import (
    ApiKeyChangeIn,
    ApiKeyIn,
    BatchIn,
    EntityIn,
    IndexIn,
    QueryIn,
    ReencryptIn,
)
from themisdb.audit import AuditBroker
from themisdb.crypto import EncryptionSchema, wrapped_version
from themisdb.database import Database
from themisdb.errors import Conflict, Forbidden, NotFound, Unprocessable
from themisdb.keys import Rotatable
from themisdb.posture import default_probes, evaluate, render
from themisdb.redaction import PiiRuntime
from themisdb.replication import ReplicationNode
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
)


@dataclass
class Services:
    """What handlers may use; built once per process by the server."""

    settings: Settings
    storage: Storage
    db: Database
    metrics: Metrics
    auth: Authenticator
    audit: AuditBroker | None = None
    pii: PiiRuntime | None = None
    limits: Limits | None = None
    replication: ReplicationNode | None = None


@dataclass
class Call:
    request: Request
    principal: Principal
    services: Services
    events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, category: str, action: str, resource: Any) -> None:
        """An audit event of this request (keys and counts, never values); written, with the
        request's outcome, once the handler has finished."""
        self.events.append({"category": category, "action": action, "resource": resource})

    async def body(self) -> Any:
        return await read_json(self.request, self.services.settings.max_body_bytes)

    async def write(self, ops: list[Op]) -> list[int | None]:
        return await asyncio.wrap_future(self.services.storage.submit(ops))

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def pii_read(self) -> bool:
        return self.principal.allows(PII_READ)

    def table(self, name: str) -> str:
        """A table named by the client: valid, and one this credential may use."""
        table = check_table(name)
        self.principal.require_table(table)
        return table

    def key(self, raw: str) -> tuple[str, str]:
        """``table:pk`` named by the client: valid, in a table this credential may use."""
        table, pk = parse_key(raw)
        self.principal.require_table(table)
        return table, pk


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
    table, pk = call.key(call.request.path_params["key"])
    entity = _object(await call.body(), "the entity")
    call.record("data_access", "write", {"table": table, "key": pk})
    op = await run_in_threadpool(call.db.put_op, table, pk, entity)
    (lsn,) = await call.write([op])
    return _entity_response(f"{table}:{pk}", lsn)


async def post_entity(call: Call) -> Response:
    item = validate(EntityIn, await call.body())
    table, pk = call.key(item.key)
    call.record("data_access", "write", {"table": table, "key": pk})
    op = await run_in_threadpool(call.db.put_op, table, pk, item.blob)
    (lsn,) = await call.write([op])
    return _entity_response(f"{table}:{pk}", lsn)


async def get_entity(call: Call) -> Response:
    table, pk = call.key(call.request.path_params["key"])
    call.record("data_access", "read", {"table": table, "key": pk})
    entity = await run_in_threadpool(
        functools.partial(call.db.get, table, pk, pii_read=call.pii_read)
    )
    if entity is None:
        raise NotFound(f"no entity {table}:{pk}", code="entity_not_found")
    return JSONResponse({"key": f"{table}:{pk}", "blob": entity})


async def delete_entity(call: Call) -> Response:
    table, pk = call.key(call.request.path_params["key"])
    call.record("data_access", "delete", {"table": table, "key": pk})
    (lsn,) = await call.write([call.db.delete_op(table, pk)])
    if lsn is None:
        raise NotFound(f"no entity {table}:{pk}", code="entity_not_found")
    return JSONResponse({"key": f"{table}:{pk}", "deleted": True, "lsn": lsn})


async def batch_put(call: Call) -> Response:
    batch = validate(BatchIn, await call.body())
    keys = []
    for number, item in enumerate(batch.entities):
        try:
            keys.append(call.key(item.key))
        except Unprocessable as exc:
            raise Unprocessable(f"entities[{number}]: {exc.message}", code=exc.code) from exc

    def seal() -> list[Op]:
        return [
            call.db.put_op(table, pk, item.blob)
            for (table, pk), item in zip(keys, batch.entities, strict=True)
        ]

    tables = sorted({table for table, _ in keys})
    call.record("data_access", "write", {"tables": tables, "count": len(keys)})
    lsns = await call.write(await run_in_threadpool(seal))
    return JSONResponse({"written": len(lsns), "first_lsn": lsns[0], "last_lsn": lsns[-1]})


# --- queries, indexes, export ----------------------------------------------------------------


async def query(call: Call) -> Response:
    body = validate(QueryIn, await call.body())
    table = call.table(body.table)
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
    result, shown = await run_in_threadpool(
        functools.partial(
            call.db.query,
            q,
            max_results=call.services.settings.query_max_results,
            explain=body.explain,
            pii_read=call.pii_read,
        )
    )
    call.record("data_access", "query", {"table": table, "count": len(result.keys)})
    payload: dict[str, Any] = {"table": table, "count": len(result.keys)}
    if shown is None:
        payload["keys"] = result.keys
    else:
        payload["entities"] = [
            {"key": k, "blob": e} for k, e in zip(result.keys, shown, strict=True)
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
    table, column = call.table(body.table), check_field(body.column)
    call.db.check_index(table, column)
    call.record("administrative", "index.create", {"table": table, "column": column})
    (lsn,) = await call.write([Op("create_index", table, column)])
    return JSONResponse({"table": table, "column": column, "lsn": lsn}, status_code=201)


async def drop_index(call: Call) -> Response:
    body = validate(IndexIn, await call.body())
    table, column = call.table(body.table), check_field(body.column)
    call.record("administrative", "index.drop", {"table": table, "column": column})
    (lsn,) = await call.write([Op("drop_index", table, column)])
    return JSONResponse({"table": table, "column": column, "dropped": True, "lsn": lsn})


async def index_stats(call: Call) -> Response:
    stats = await run_in_threadpool(call.services.storage.index_stats)
    return JSONResponse(
        {
            "indexes": [
                {"table": i.table, "column": i.field, "entries": i.entries, "created": i.created}
                for i in stats
                if call.principal.may_use_table(i.table)
            ]
        }
    )


async def export_table(call: Call) -> Response:
    table = call.table(call.request.path_params["table"])
    if not await run_in_threadpool(call.services.storage.has_table, table):
        raise NotFound(f"table {table} does not exist", code="table_not_found")
    entities = call.db.export(table, pii_read=call.pii_read)
    call.record("data_access", "export", {"table": table})

    async def lines() -> AsyncIterator[bytes]:
        async for pk, entity in iterate_in_threadpool(entities):
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
    call.record("administrative", "posture.read", None)
    report = await run_in_threadpool(evaluate, call.services.settings, default_probes())
    return Response(render.as_json(report), media_type="application/json")


async def effective_config(call: Call) -> Response:
    settings = call.services.settings
    call.record("administrative", "config.read", None)
    # mode="json" renders every SecretStr as "**********"; sources name files, never values.
    return JSONResponse(settings.model_dump(mode="json", by_alias=True))


async def get_schema(call: Call) -> Response:
    return JSONResponse(call.db.schema.model_dump())


async def put_schema(call: Call) -> Response:
    schema = validate(EncryptionSchema, await call.body())
    call.record("administrative", "schema.change", {"tables": sorted(schema.tables)})
    lsn = await run_in_threadpool(call.db.set_schema, schema)
    return JSONResponse({**schema.model_dump(), "lsn": lsn})


async def key_status(call: Call) -> Response:
    envelope = call.db.envelope
    deks = await run_in_threadpool(call.services.storage.deks)
    since = await run_in_threadpool(call.db.master_key_since)
    return JSONResponse(
        {
            "provider": envelope.provider.name,
            "master_key": envelope.provider.current_key_id(),
            "master_key_since": since,
            "data_keys": [
                {"table": t, "version": v, "created": c, "wrapped_by": f"v{wrapped_version(w)}"}
                for t, v, w, c in deks
            ],
        }
    )


async def rotate_keys(call: Call) -> Response:
    if call.services.storage.refusal is not None:  # before the key manager changes anything
        raise call.services.storage.refusal
    provider = call.db.envelope.provider
    if not isinstance(provider, Rotatable):
        raise Unprocessable(f"the {provider.name} provider cannot rotate", code="not_rotatable")
    call.record("administrative", "key.rotate", {"provider": provider.name})
    new_id = await run_in_threadpool(provider.rotate)
    rewrapped = await run_in_threadpool(call.db.envelope.rewrap_all)
    await run_in_threadpool(call.db.note_master_key)
    return JSONResponse({"master_key": new_id, "rewrapped_data_keys": rewrapped})


def _replication(call: Call) -> ReplicationNode:
    if call.services.replication is None:
        raise Conflict(
            "this node does not replicate (THEMIS_ROLE=standalone)", code="not_replicating"
        )
    return call.services.replication


async def replication_status(call: Call) -> Response:
    node = _replication(call)
    return JSONResponse(await run_in_threadpool(node.status))


async def promote(call: Call) -> Response:
    node = _replication(call)
    call.record("administrative", "replication.promote", {"node": node.node_id})
    epoch = await run_in_threadpool(node.promote)
    return JSONResponse({"role": node.role, "epoch": epoch, "node_id": node.node_id})


async def reencrypt(call: Call) -> Response:
    body = validate(ReencryptIn, await call.body())
    table = call.table(body.table)
    call.record("administrative", "key.reencrypt", {"table": table, "after": body.after})
    page = await run_in_threadpool(call.db.reencrypt_page, table, body.after, body.limit)
    total = await run_in_threadpool(call.services.storage.count, table)
    return JSONResponse(
        {
            "table": table,
            "processed": page.processed,
            "rewritten": page.rewritten,
            "last": page.last,
            "done": page.done,
            "total": total,
        }
    )


_AUDIT_FILTERS = ("category", "actor", "outcome", "action")


def _audit_events(call: Call) -> Iterator[dict[str, Any]]:
    broker = call.services.audit
    if broker is None:
        raise NotFound("audit logging is disabled", code="audit_disabled")
    params = call.request.query_params
    wanted = {k: params[k] for k in _AUDIT_FILTERS if k in params}
    since, until = params.get("since"), params.get("until")
    for event in broker.read_events():
        if any(str(event.get(k)) != v for k, v in wanted.items()):
            continue
        # RFC 3339 UTC with a fixed width: string order is time order.
        if (since and event["time"] < since) or (until and event["time"] > until):
            continue
        yield event


async def audit_query(call: Call) -> Response:
    limit = call.request.query_params.get("limit", "1000")
    if not limit.isdigit() or not 1 <= int(limit) <= 10000:
        raise Unprocessable("limit is 1..10000", code="invalid_query")
    call.record("data_access", "audit.read", None)
    events = await run_in_threadpool(
        lambda: list(itertools.islice(_audit_events(call), int(limit) + 1))
    )
    truncated = len(events) > int(limit)
    return JSONResponse({"events": events[: int(limit)], "truncated": truncated})


_CSV_COLUMNS = (
    "seq",
    "time",
    "node",
    "category",
    "action",
    "actor",
    "source",
    "resource",
    "outcome",
    "reason",
    "request_id",
    "prev_hash",
    "hash",
)


async def audit_export(call: Call) -> Response:
    kind = call.request.query_params.get("format", "ndjson")
    if kind not in ("ndjson", "csv"):
        raise Unprocessable("format is ndjson or csv", code="invalid_query")
    call.record("data_access", "audit.export", {"format": kind})
    events = _audit_events(call)

    async def lines() -> AsyncIterator[bytes]:
        if kind == "csv":
            yield (",".join(_CSV_COLUMNS) + "\r\n").encode()
        async for event in iterate_in_threadpool(events):
            if kind == "ndjson":
                yield json.dumps(event, ensure_ascii=False).encode() + b"\n"
            else:
                out = io.StringIO()
                csv.writer(out).writerow(
                    json.dumps(event.get(c))
                    if isinstance(event.get(c), dict | list)
                    else event.get(c)
                    for c in _CSV_COLUMNS
                )
                yield out.getvalue().encode()

    media = "text/csv" if kind == "csv" else "application/x-ndjson"
    return StreamingResponse(lines(), media_type=media)


# --- API keys and sessions --------------------------------------------------------------------


def _keys(call: Call) -> ApiKeyStore:
    keys = call.services.auth.keys
    assert keys is not None  # the server always builds the store
    return keys


def _sessions(call: Call) -> SessionStore:
    sessions = call.services.auth.sessions
    assert sessions is not None
    return sessions


async def create_api_key(call: Call) -> Response:
    body = validate(ApiKeyIn, await call.body())
    expires = time.time() + body.expires_in if body.expires_in is not None else None
    token, key = await run_in_threadpool(
        _keys(call).create, body.name, body.scopes, body.tables, expires
    )
    call.record(
        "administrative",
        "api_key.create",
        {"id": key.id, "name": key.name, "scopes": list(key.scopes), "tables": key.tables},
    )
    # The secret is in this response only: just its hash is stored.
    return JSONResponse({**key.public(), "token": token}, status_code=201)


async def list_api_keys(call: Call) -> Response:
    keys = await run_in_threadpool(_keys(call).all)
    call.record("administrative", "api_key.list", {"count": len(keys)})
    return JSONResponse({"keys": [k.public() for k in keys]})


async def change_api_key(call: Call) -> Response:
    key_id = call.request.path_params["id"]
    body = validate(ApiKeyChangeIn, await call.body())
    if body.scopes is None and body.tables is None and not body.all_tables:
        raise Unprocessable("give scopes, tables or all_tables", code="invalid_body")
    before, after = await run_in_threadpool(
        functools.partial(
            _keys(call).change,
            key_id,
            scopes=body.scopes,
            tables=body.tables,
            all_tables=body.all_tables,
        )
    )
    call.record(
        "authorization",
        "role.change",
        {
            "id": key_id,
            "scopes": {"before": list(before.scopes), "after": list(after.scopes)},
            "tables": {"before": before.tables, "after": after.tables},
        },
    )
    return JSONResponse(after.public())


async def revoke_api_key(call: Call) -> Response:
    key_id = call.request.path_params["id"]
    key = await run_in_threadpool(_keys(call).revoke, key_id)
    call.record("administrative", "api_key.revoke", {"id": key_id, "name": key.name})
    return JSONResponse(key.public())


async def create_session(call: Call) -> Response:
    principal = call.principal
    if principal is ANONYMOUS or principal.name.startswith("session:"):
        raise Forbidden(
            "a session is made from an API key or a token, not from a session or no token",
            code="credential_required",
        )
    header = call.request.headers.get("authorization", "")
    token = header.partition(" ")[2].strip()
    sessions = _sessions(call)
    parent = call.services.auth.parent_of(principal, token)
    secret, session = sessions.create(parent, principal.identity)
    call.record("authentication", "session.create", {"id": session.id, "owner": session.owner})
    public = session.public(sessions.idle_timeout, sessions.lifetime)
    return JSONResponse({**public, "token": secret}, status_code=201)


async def list_sessions(call: Call) -> Response:
    sessions = _sessions(call)
    mine = sessions.of_owner(call.principal.identity)
    call.record("authentication", "session.list", {"count": len(mine)})
    return JSONResponse(
        {"sessions": [s.public(sessions.idle_timeout, sessions.lifetime) for s in mine]}
    )


async def delete_session(call: Call) -> Response:
    session_id = call.request.path_params["id"]
    owner = None if call.principal.allows(ADMIN) else call.principal.identity
    session = _sessions(call).revoke(session_id, owner=owner)
    call.record("authentication", "session.logout", {"id": session.id, "owner": session.owner})
    return JSONResponse({"id": session.id, "deleted": True})


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
        "GET",
        "/admin/replication",
        ADMIN,
        "Replication role, epoch, LSNs, lag of this node and of its followers",
        replication_status,
    ),
    Endpoint(
        "POST",
        "/admin/replication/promote",
        ADMIN,
        "Promote this follower to leader of a new epoch",
        promote,
    ),
    Endpoint(
        "GET", "/admin/config", ADMIN, "Effective settings, secrets redacted", effective_config
    ),
    Endpoint(
        "GET",
        "/config/encryption-schema",
        ADMIN,
        "Encrypted fields and classifications",
        get_schema,
    ),
    Endpoint(
        "PUT",
        "/config/encryption-schema",
        ADMIN,
        "Replace the encryption schema",
        put_schema,
        EncryptionSchema,
    ),
    Endpoint(
        "GET", "/keys", KEYS_ADMIN, "Master key version and data keys with their ages", key_status
    ),
    Endpoint(
        "POST",
        "/keys/rotate",
        KEYS_ADMIN,
        "New master key version; rewrap every data key",
        rotate_keys,
    ),
    Endpoint("GET", "/api/audit", AUDIT_READ, "Audit events, filtered", audit_query),
    Endpoint(
        "GET",
        "/api/audit/export",
        AUDIT_READ,
        "Audit events as NDJSON or CSV",
        audit_export,
        media="application/x-ndjson",
    ),
    Endpoint(
        "POST",
        "/keys/reencrypt",
        KEYS_ADMIN,
        "Re-encrypt one page of a table under its newest data key",
        reencrypt,
        ReencryptIn,
    ),
    Endpoint(
        "POST",
        "/api/keys",
        ADMIN,
        "Create an API key (its token is shown once)",
        create_api_key,
        ApiKeyIn,
    ),
    Endpoint("GET", "/api/keys", ADMIN, "API keys, without their secrets", list_api_keys),
    Endpoint(
        "PATCH",
        "/api/keys/{id}",
        ADMIN,
        "Change an API key's scopes or tables",
        change_api_key,
        ApiKeyChangeIn,
    ),
    Endpoint("DELETE", "/api/keys/{id}", ADMIN, "Revoke an API key", revoke_api_key),
    Endpoint(
        "POST",
        "/auth/sessions",
        AUTHENTICATED,
        "Exchange an API key or token for a session token",
        create_session,
    ),
    Endpoint("GET", "/auth/sessions", AUTHENTICATED, "The caller's sessions", list_sessions),
    Endpoint(
        "DELETE",
        "/auth/sessions/{id}",
        AUTHENTICATED,
        "Log out a session (admin: any session)",
        delete_session,
    ),
)
