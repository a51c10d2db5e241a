"""Reading request bodies: size limit, media type, JSON, shape. Nothing half-read is acted on."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from themisdb.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMedia

M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


async def read_json(request: Request, limit: int) -> Any:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMedia("send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    try:
        # NaN and Infinity are not JSON; refusing them keeps stored entities portable.
        return json.loads(b"".join(chunks), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("the body is not valid JSON", code="malformed_json") from exc


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(describe(exc), code="invalid_body") from exc


def describe(exc: ValidationError) -> str:
    """Field paths and reasons, without echoing the submitted values."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
