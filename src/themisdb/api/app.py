"""ASGI applications: the public API (routes.ROUTES) and the internal listener."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from themisdb.access import ANONYMOUS, Decision, Principal
from themisdb.api.auth import fingerprint
from themisdb.api.errors import EXCEPTION_HANDLERS
from themisdb.api.routes import ROUTES, Call, Endpoint, Services
from themisdb.audit import AuditBroker
from themisdb.errors import (
    AuditUnavailable,
    ClientError,
    Forbidden,
    IntegrityError,
    KeyProviderUnavailable,
    PayloadTooLarge,
    StorageError,
    TooManyRequests,
    Unauthorized,
)
from themisdb.redaction import PiiRuntime

_log = logging.getLogger("themisdb.api")

_AUTH_EVENTS = {"malformed_token": "malformed_token", "session_expired": "session_expired"}
# Failures that guess at a credential: they count towards the source's lockout. An expired
# session or a previous token past its deadline is a client that is behind, not a guess.
_GUESSES = frozenset({"invalid_token", "malformed_token"})


def _security_event(services: Services, exc: ClientError) -> None:
    metrics = services.metrics
    if isinstance(exc, Unauthorized):
        metrics.security_event("authentication", _AUTH_EVENTS.get(exc.code, "auth_failure"))
    elif exc.code == "insufficient_scope":
        metrics.security_event("authorization", "scope_denied")
    elif isinstance(exc, PayloadTooLarge):
        metrics.security_event("security", "body_too_large")
    elif exc.code == "pii_unencrypted_field":
        metrics.security_event("security", "pii_rejected")
    elif isinstance(exc, TooManyRequests):
        locked = exc.code == "locked_out"
        metrics.security_event("security", "auth_lockout" if locked else "rate_limit_exceeded")


def _wrap(endpoint: Endpoint, services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        request.scope["themis.route"] = endpoint.path
        audit = _RequestAudit(services.audit, request, endpoint, services.pii)
        try:
            principal = _admit(request, endpoint, services, audit)
            broker = services.audit
            if broker is not None and broker.block:
                # Vault's order: the request is on record before anything happens. A sink
                # that fails on this write is found now, and the request refused, not after.
                await audit.aflush()
                if not broker.available:
                    raise AuditUnavailable("no audit sink can write")
            call = Call(request, principal, services)
            try:
                response = await endpoint.handler(call)
            except ClientError as exc:
                audit.extend(call.events, outcome="failure", reason=exc.code)
                if exc.code == "pii_unencrypted_field":
                    audit.add("security", "pii.rejected", outcome="denied", reason=exc.message)
                raise
            except (KeyProviderUnavailable, IntegrityError, StorageError) as exc:
                audit.extend(call.events, outcome="error", reason=type(exc).__name__)
                audit.add(
                    "security",
                    _SECURITY_ACTIONS.get(type(exc), "error"),
                    outcome="error",
                    reason=type(exc).__name__,
                )
                raise
            audit.extend(call.events, outcome="success")
            return response
        except ClientError as exc:
            _security_event(services, exc)
            raise
        except KeyProviderUnavailable:
            services.metrics.security_event("security", "key_provider_error")
            raise
        except IntegrityError:
            services.metrics.security_event("security", "integrity_failure")
            raise
        finally:
            await audit.aflush()

    return handle


def _admit(
    request: Request, endpoint: Endpoint, services: Services, audit: _RequestAudit
) -> Principal:
    """Lockout and rate limits, authentication, authorization and the block-mode audit
    check, each audited. The tighter rate-limit decision goes into the response's headers."""
    limits = services.limits
    limit: Decision | None = None
    if limits is not None:
        locked = limits.lockout.locked_for(audit.source)
        if locked:
            raise TooManyRequests(
                "too many failed authentications from this address; retry later",
                code="locked_out",
                retry_after=locked,
                headers={},
            )
        limit = _take(limits.per_source.take(audit.source), "source", audit)
        request.scope["themis.limit"] = limit
    try:
        principal = services.auth.authenticate(request)
    except Unauthorized as exc:
        action = "session.timeout" if exc.code == "session_expired" else "authenticate"
        audit.add("authentication", action, outcome="failure", reason=exc.code)
        if limits is not None and exc.code in _GUESSES:
            seconds = limits.lockout.failure(audit.source)
            if seconds:
                audit.add(
                    "security",
                    "auth.lockout",
                    outcome="denied",
                    reason=f"source locked out for {seconds} s after repeated failures",
                )
        raise
    audit.actor = f"{principal.name}:{principal.fingerprint}"
    audit.add("authentication", "authenticate")
    if limits is not None and principal is not ANONYMOUS:
        own = _take(limits.per_credential.take(principal.fingerprint), "credential", audit)
        if limit is None or own.remaining < limit.remaining:
            request.scope["themis.limit"] = own
    try:
        principal.require(endpoint.scope)
    except Forbidden as exc:
        audit.add("authorization", "authorize", outcome="denied", reason=exc.code)
        raise
    audit.add("authorization", "authorize", outcome="granted")
    if audit.broker is not None and audit.broker.block and not audit.broker.available:
        # Nothing happens that is not audited: refuse before doing anything.
        raise AuditUnavailable("no audit sink can write")
    return principal


def _limit_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.retry_after),
    }


def _take(decision: Decision, which: str, audit: _RequestAudit) -> Decision:
    """``decision`` if allowed; else 429 (the first refusal of a run is audited, the rest
    only counted: a flood must not turn into a flood of fsync'd audit records)."""
    if decision.allowed:
        return decision
    if decision.first_refusal:
        audit.add("security", "rate_limit.exceeded", outcome="denied", reason=f"{which} limit")
    raise TooManyRequests(
        f"rate limit of this {which} exceeded; retry after {decision.retry_after} s",
        code="rate_limited",
        retry_after=decision.retry_after,
        headers=_limit_headers(decision),
    )


_SECURITY_ACTIONS: dict[type[Exception], str] = {
    KeyProviderUnavailable: "key_provider.error",
    IntegrityError: "integrity.failure",
    StorageError: "storage.error",
}


class _RequestAudit:
    """Collects one request's audit events and writes them together (one fsync)."""

    def __init__(
        self,
        broker: AuditBroker | None,
        request: Request,
        endpoint: Endpoint,
        pii: PiiRuntime | None,
    ) -> None:
        self.broker = broker
        self.pii = pii
        self.actor = fingerprint(request.headers.get("authorization"))
        self.source = request.client.host if request.client else "-"
        self.request_id = str(request.scope.get("themis.request_id", "-"))
        self.route = f"{endpoint.method} {endpoint.path}"
        self.events: list[dict[str, Any]] = []

    def add(
        self,
        category: str,
        action: str,
        *,
        outcome: str = "success",
        reason: str | None = None,
        resource: Any = None,
    ) -> None:
        resource = resource if resource is not None else {"route": self.route}
        if self.pii is not None:
            # Keys and reasons come from the client and can hold PII (an e-mail as primary
            # key): never raw in the audit log. The source address is the event's own
            # subject (who connected), recorded as it is, like any security log does.
            resource, reason = self.pii.redact_value(resource), self.pii.redact_value(reason)
        self.events.append(
            {
                "category": category,
                "action": action,
                "outcome": outcome,
                "reason": reason,
                "resource": resource,
                "actor": self.actor,
                "source": self.source,
                "request_id": self.request_id,
            }
        )

    def extend(
        self, events: list[dict[str, Any]], *, outcome: str, reason: str | None = None
    ) -> None:
        for event in events:
            self.add(
                event["category"],
                event["action"],
                outcome=outcome,
                reason=reason,
                resource=event["resource"],
            )

    async def aflush(self) -> None:
        """Write the collected events off the event loop (the file sink fsyncs)."""
        if self.broker is not None and self.events:
            events, self.events = self.events, []
            await run_in_threadpool(self.broker.emit_many, events)


class _Observe:
    """Request id, access log line and request metrics for every request, matched or not."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.metrics = services.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope["themis.request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                limit = scope.get("themis.limit")
                if limit is not None and not any(k == b"x-ratelimit-limit" for k, _ in headers):
                    headers += [
                        (k.lower().encode(), v.encode()) for k, v in _limit_headers(limit).items()
                    ]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("themis.route", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route, scope["method"], str(status)).observe(elapsed)
            # The route template, never the raw path: keys and table names can be sensitive.
            _log.info(
                "%s %s %d %.1fms id=%s", scope["method"], route, status, elapsed * 1000, request_id
            )


def create_app(services: Services) -> ASGIApp:
    routes = [
        Route(e.path, _wrap(e, services), methods=[e.method], name=f"{e.method} {e.path}")
        for e in ROUTES
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    return _Observe(app, services)


def create_internal_app(services: Services) -> Starlette:
    """Health and metrics: not authenticated, meant for an internal-only address."""

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            await run_in_threadpool(services.storage.check_writable)
            checks["storage"] = "ok"
        except StorageError as exc:
            checks["storage"] = str(exc)
        health = await run_in_threadpool(services.db.envelope.check_health)
        checks["key_provider"] = "ok" if health.ok else health.detail
        if services.pii is not None:
            checks["pii"] = "ok" if services.pii.healthy else f"PII engine: {services.pii.error}"
        broker = services.audit
        if broker is not None and broker.block:
            checks["audit"] = "ok" if broker.available else "no audit sink can write"
        document: dict[str, object] = {"checks": checks}
        node = services.replication
        if node is not None:
            checks["replication"] = node.health()
            status = await run_in_threadpool(node.status)
            document["replication"] = status.get("following") or {
                "role": status["role"],
                "epoch": status["epoch"],
                "last_lsn": status["last_lsn"],
            }
        healthy = all(value == "ok" for value in checks.values())
        document["status"] = "ready" if healthy else "unavailable"
        return JSONResponse(document, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", metrics),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
