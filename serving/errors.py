"""Errors for people: OpenAI-shaped error bodies whose messages say what was wrong and what to do.

Every failure a client can cause ends here as a 4xx (or a 5xx for the server's own trouble) with a body
`{"error": {"message", "type", "param", "code"}}` that OpenAI clients understand. Pydantic's validation
errors are rewritten into one sentence naming the field, because its raw list (one entry per arm of a
union type) reads like noise to a person.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlvr_jax.serving import schemas

log = logging.getLogger(__name__)

ROUTES = "/v1/completions, /v1/chat/completions, /v1/models, /v1/feedback, /health, /ready, /metrics"


class ApiError(Exception):
    """An error for the client: HTTP status, OpenAI error type, the field at fault, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = schemas.ErrorResponse(
            error=schemas.ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        )
        return AsciiJSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: an error message may quote the client's own text, and text
    that UTF-8 cannot encode (a lone surrogate) must not turn a 4xx into a plain-text 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class BodyTooLarge(StarletteHTTPException):
    """A request body that grew past --max_body_bytes while it streamed in (no Content-Length given).

    An HTTPException, because FastAPI turns any other error raised while it reads a body into a 400
    "There was an error parsing the body"; this one it passes on to our handler."""

    def __init__(self, message: str):
        super().__init__(413, message)

    def __str__(self) -> str:
        return str(self.detail)


class BodyTimeout(StarletteHTTPException):
    """A request body that stopped arriving: no bytes for --body_timeout seconds (an HTTPException for
    the same reason as BodyTooLarge)."""

    def __init__(self, message: str):
        super().__init__(408, message)

    def __str__(self) -> str:
        return str(self.detail)


def too_large_message(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes (--max_body_bytes)"


def body_timeout_message(seconds: float) -> str:
    return (
        f"the request body did not arrive within {seconds:g} s (--body_timeout); send the whole body at once"
    )


_FIELD_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of up to 4 strings",
    "messages.*.content": (
        'a string or a list of {"type": "text", "text": "..."} parts (this server takes text only: no images '
        "or audio)"
    ),
}


_TEXT_ERRORS = ("invalid_text", "string_unicode")


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable sentence (and the first field at fault) from FastAPI / pydantic validation errors."""
    by_place: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = err.get("ctx", {}).get("error", "")
            return f"the request body is not valid JSON ({detail}); send a JSON object", None
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        by_place.setdefault(_place(_plain(loc)), []).append(err)
    parts = []
    for place, errs in by_place.items():
        # Text that is not valid Unicode explains itself better than the other arms of a union that failed.
        errs = sorted(errs, key=lambda e: e.get("type") not in _TEXT_ERRORS)
        err, kind = errs[0], errs[0].get("type")
        shape = _FIELD_SHAPES.get(_pattern(place))
        place = _clip(place)
        if kind == "invalid_text":  # schemas._encodable's own message, with the character and where it is
            parts.append(f"{place} {err.get('msg')}")
        elif kind == "string_unicode":  # pydantic's check on constrained strings, before ours
            parts.append(
                f"{place} is not valid Unicode text: it holds an unpaired surrogate, which cannot be "
                "encoded as UTF-8; send well-formed text"
            )
        elif not place:
            parts.append(f"the request body must be a JSON object ({err.get('msg')})")
        elif shape and len(errs) > 1:  # one value, several arms of a union failed
            parts.append(f"{place} must be {shape}")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field {place!r} (check its spelling; this server does not support it)")
        elif kind == "missing":
            parts.append(f"{place} is required")
        elif kind == "too_short":
            parts.append(f"{place} must not be empty")
        else:
            parts.append(f"{place}: {err.get('msg')} (got {_short(err.get('input'))})")
    first = next((p.split(".")[0] for p in by_place if p), None)
    return "invalid request: " + "; ".join(parts), first


def _clip(text: str, limit: int = 80) -> str:
    """A field name as the client sent it, cut short: an unknown key may be as long as the body."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pattern(place: str) -> str:
    return re.sub(r"\.\d+", ".*", place)


def _place(loc: list[str]) -> str:
    """Where an error is reported: the enclosing field with a known shape (so the several errors pydantic
    gives for one union-typed value read as one), else the error's own location."""
    for k in range(len(loc), 0, -1):
        if _pattern(".".join(loc[:k])) in _FIELD_SHAPES:
            return ".".join(loc[:k])
    return ".".join(loc)


def _plain(loc: list[str]) -> list[str]:
    """Drops pydantic's union-arm tags (`str`, `list[int]`, ...) from an error location."""
    return [x for x in loc if not x.startswith(("list[", "function-")) and x not in ("str", "int", "float")]


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def install_error_handlers(app: FastAPI) -> None:
    """Turns every exception a request can raise into an OpenAI-shaped error response."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return ApiError(400, message, param=param).response()

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return ApiError(413, str(exc)).response()

    @app.exception_handler(BodyTimeout)
    async def body_timeout(request: Request, exc: BodyTimeout) -> JSONResponse:
        return ApiError(408, str(exc), code="body_timeout", headers={"Connection": "close"}).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The server's own bug: logged with its traceback, answered in the same JSON shape as the rest.
        where = f"{_clip(request.method, 20)} {_clip(request.url.path)}"
        log.error("unhandled error on %s", where, exc_info=exc)
        message = f"internal server error ({type(exc).__name__}); the server log has the details"
        return ApiError(500, message, type="server_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        method, path = _clip(request.method, 20), _clip(request.url.path)
        if exc.status_code == 404:
            message = f"no route {method} {path}; this server serves {ROUTES}"
        elif exc.status_code == 405:
            message = f"{method} is not allowed on {path}"
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()
