"""The OpenAPI document, generated from the route table and the request models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from themisdb import __version__
from themisdb.access import AUTHENTICATED
from themisdb.api.routes import ROUTES

_ERROR = {"$ref": "#/components/schemas/Error"}


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        }
    }
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ROUTES:
        path = endpoint.path.replace("{key:path}", "{key}")
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": _operation_id(endpoint.method, path),
            "x-required-scope": endpoint.scope,
            "security": [{"bearer": [] if endpoint.scope == AUTHENTICATED else [endpoint.scope]}],
            "responses": {
                "200": {"description": "success", "content": {endpoint.media: {}}},
                **{
                    code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
                    for code, text in _ERRORS.items()
                },
            },
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("key", "table", "id")
            if "{" + name + "}" in path
        ]
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None or endpoint.method == "PUT":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(endpoint.body, schemas)}},
            }
        paths.setdefault(path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ThemisDB", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_ERRORS = {
    "400": "malformed JSON",
    "401": "missing or invalid token",
    "403": "the token lacks the required scope",
    "404": "not found",
    "409": "conflict",
    "413": "body larger than THEMIS_MAX_BODY_BYTES",
    "415": "body is not application/json",
    "422": "well-formed JSON of the wrong shape",
    "429": "rate limit exceeded or source locked out (see Retry-After)",
    "503": "storage unavailable",
}


def _schema(model: type[BaseModel] | None, schemas: dict[str, Any]) -> dict[str, Any]:
    if model is None:
        return {"type": "object", "description": "the entity"}
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.split("/") if w]
    return "_".join([method.lower(), *words]) if words else method.lower() + "_root"
