"""The HTTP middleware: request metrics, a cap on body size and on how long a body may take to arrive, and
the optional API key.

Metric labels take only values from fixed sets (the route templates of the app, a handful of HTTP methods,
the status codes the server sends), so a scan of made-up paths or method names cannot grow /metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Collection
from typing import Any

from rlvr_jax.serving.errors import (
    ApiError,
    BodyTimeout,
    BodyTooLarge,
    body_timeout_message,
    too_large_message,
)
from rlvr_jax.serving.metrics import ServerMetrics

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
UNMATCHED = "unmatched"
# Open without the API key: probes and scrapers, and the API's own description.
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/redoc"})


def metric_labels(scope: dict[str, Any], code: int, routes: Collection[str]) -> tuple[str, str, str]:
    """(route, method, status): the matched route's template (or a known path refused before routing,
    e.g. by the API key), else "unmatched"; a method outside KNOWN_METHODS is "other"."""
    route = getattr(scope.get("route"), "path", None)
    if route is None:
        route = scope.get("path") if scope.get("path") in routes else UNMATCHED
    method = scope.get("method", "")
    return route, method if method in KNOWN_METHODS else OTHER, str(code)


class HttpMiddleware:
    """Pure ASGI middleware: request count and latency by route and status (to the last byte, so a stream
    counts whole), in-flight gauge, a cap on request body size (memory stays bounded) and a deadline for
    each part of the body (a client that stops sending half-way does not hold a request open)."""

    def __init__(
        self,
        app: Any,
        metrics: ServerMetrics,
        max_body_bytes: int,
        body_timeout_s: float,
        routes: Collection[str] = (),
    ):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.body_timeout_s, self.routes = body_timeout_s, routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = {"code": 500}
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = ApiError(413, too_large_message(limit)).response()
            await response(scope, receive, send)
            self._observe(scope, 413, start)
            return
        received, body_done = 0, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, body_done
            if body_done:  # after the body, receive() waits for a disconnect, for as long as a stream lasts
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(body_timeout_message(self.body_timeout_s)) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(too_large_message(limit))
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            self.metrics.in_flight.dec()
            self._observe(scope, status["code"], start)

    def _observe(self, scope: dict[str, Any], code: int, start: float) -> None:
        labels = metric_labels(scope, code, self.routes)
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(*labels).observe(time.monotonic() - start)


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer KEY` on every path but OPEN_PATHS (as vLLM's --api-key does for its
    API): a missing or wrong key gets a 401 in OpenAI's error shape. The comparison takes constant time."""

    def __init__(self, app: Any, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        response = ApiError(
            401, "missing or wrong API key: send the header 'Authorization: Bearer YOUR_KEY' with the key "
            "the server was started with (--api-key or RLVR_API_KEY)",
            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
        ).response()  # fmt: skip
        await response(scope, receive, send)

    def _authorised(self, scope: dict[str, Any]) -> bool:
        given = next((v for k, v in scope.get("headers") or [] if k == b"authorization"), b"")
        return hmac.compare_digest(given, self.expected)
