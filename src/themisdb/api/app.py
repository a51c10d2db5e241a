"""ASGI applications: the public API and the internal (health/metrics) listener.

The data API arrives with the database issue; until then the public app answers its root and
returns JSON errors for everything else, never a stack trace.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from themisdb import __version__
from themisdb.settings import Settings

_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    return JSONResponse({"error": code, "message": str(exc.detail)}, status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "internal_error", "message": "internal error"}, status_code=500)


def create_app(settings: Settings) -> Starlette:
    mode = "production" if settings.production else "development"

    async def root(request: Request) -> Response:
        return JSONResponse({"service": "themisdb", "version": __version__, "mode": mode})

    return Starlette(
        routes=[Route("/", root)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


def create_internal_app(settings: Settings) -> Starlette:
    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/health/live", live)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
