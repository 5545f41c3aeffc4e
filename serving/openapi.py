"""The OpenAPI document (/openapi.json, /docs) lists the status codes the server really answers with.

FastAPI documents a 422 "Validation Error" for every route that takes a body, but this server answers
malformed requests with 400 in OpenAI's error shape (`serving.errors`), and it has other answers FastAPI
cannot know about: 401 from the API key, 408 / 413 from the body limits, 429 from the queue, 503 while
loading, 504 from the request timeout. `document_responses` replaces the generated error responses with
that list, per route, so that generated clients and readers see what will actually come back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from rlvr_jax.serving import schemas
from rlvr_jax.serving.middleware import OPEN_PATHS

WHY = {
    400: "invalid request: the message names the field and what to change",
    401: "missing or wrong API key (servers started with --api-key): send 'Authorization: Bearer KEY'",
    404: "unknown model, unknown route, or (feedback) an id no longer in the drift window",
    408: "the request body did not arrive within --body_timeout seconds",
    413: "the request body is larger than --max_body_bytes",
    429: "the queue is full (--max_queue); retry after the Retry-After header's seconds",
    500: "the server's own failure (generation failed); the message says what happened",
    503: "the model is still loading, failed to load, or the server is shutting down (Retry-After)",
    504: "the request did not finish within --request_timeout seconds",
}
GENERATION = (400, 404, 408, 413, 429, 500, 503, 504)
# The codes each route can answer with besides 200 (and 401 when an API key is set, 500 for a bug).
ROUTE_CODES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/completions"): GENERATION,
    ("post", "/v1/chat/completions"): GENERATION,
    ("post", "/v1/feedback"): (400, 404, 408, 413),
    ("get", "/ready"): (503,),
}


def route_codes(method: str, path: str, *, api_key: bool) -> list[int]:
    """The error status codes one route may answer with."""
    codes = set(ROUTE_CODES.get((method.lower(), path), ())) | {500}
    if api_key and path not in OPEN_PATHS:
        codes.add(401)
    return sorted(codes)


def document_responses(app: FastAPI, *, api_key: bool) -> None:
    """Makes `app.openapi()` list each route's real error responses (and no 422)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _fix(schema, api_key=api_key)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fix(schema: dict[str, Any], *, api_key: bool) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error = schemas.ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error.pop("$defs", {}))
    components["ErrorResponse"] = error
    json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in route_codes(method, path, api_key=api_key):
                if path == "/ready" and code == 503:  # the readiness body itself, not an error body
                    responses["503"] = {"description": "not ready: loading, failed, or shutting down"}
                    continue
                responses[str(code)] = {"description": WHY[code], "content": json_error}
