"""The one place that turns exceptions into HTTP responses (a registry keyed on the class).

Clients get ``{"error": code, "message": text}``; never a stack trace, path or secret. Errors
that are not the client's fault carry only a request id to quote to an operator.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from themisdb.errors import (
    AuditUnavailable,
    ClientError,
    IntegrityError,
    KeyProviderUnavailable,
    StorageError,
    TooManyRequests,
    Unauthorized,
)
from themisdb.redaction import PiiUnavailable

_log = logging.getLogger("themisdb.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
AUTH_CHALLENGE = 'Bearer realm="themis"'


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return str(request.scope.get("themis.request_id", "-"))


async def client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = AUTH_CHALLENGE
        if exc.code == "invalid_token":
            headers["WWW-Authenticate"] += ', error="invalid_token"'
    if isinstance(exc, TooManyRequests):
        headers.update(exc.headers)
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(exc.status, exc.code, exc.message, **headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(
        exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), str(exc.detail)
    )


async def storage_error(request: Request, exc: Exception) -> Response:
    _log.error("storage error (request %s): %s", _request_id(request), exc)
    return error_response(
        503, "storage_unavailable", f"storage unavailable; request id {_request_id(request)}"
    )


async def key_provider_error(request: Request, exc: Exception) -> Response:
    _log.error("key provider unavailable (request %s): %s", _request_id(request), exc)
    return error_response(
        503,
        "key_provider_unavailable",
        "the key manager is unavailable; nothing was written. Retry later.",
    )


async def integrity_error(request: Request, exc: Exception) -> Response:
    _log.error("integrity check failed (request %s)", _request_id(request))
    return error_response(
        500,
        "integrity_error",
        f"stored data failed its integrity check; request id {_request_id(request)}",
    )


async def audit_error(request: Request, exc: Exception) -> Response:
    return error_response(
        503,
        "audit_unavailable",
        "no audit sink can record this request, so it was not carried out. Retry later.",
    )


async def pii_error(request: Request, exc: Exception) -> Response:
    return error_response(
        503,
        "pii_engine_unavailable",
        "strict PII mode and the PII engine is unavailable: writes are refused.",
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    _log.error("internal error (request %s)", _request_id(request), exc_info=exc)
    return error_response(
        500, "internal_error", f"internal error; request id {_request_id(request)}"
    )


EXCEPTION_HANDLERS = {
    ClientError: client_error,
    HTTPException: http_error,
    StorageError: storage_error,
    KeyProviderUnavailable: key_provider_error,
    AuditUnavailable: audit_error,
    PiiUnavailable: pii_error,
    IntegrityError: integrity_error,
    Exception: internal_error,
}
