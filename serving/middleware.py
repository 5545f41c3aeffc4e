"""The HTTP middleware: request metrics by route and status, and a cap on request body size."""

from __future__ import annotations

import time
from typing import Any

from serving.errors import ApiError, BodyTooLarge, too_large_message
from serving.metrics import ServerMetrics


class HttpMiddleware:
    """Pure ASGI middleware: request count and latency by route and status (to the last byte, so a stream
    counts whole), in-flight gauge, and a cap on request body size (memory stays bounded)."""

    def __init__(self, app: Any, metrics: ServerMetrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

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
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(too_large_message(limit))
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
        route = scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        labels = (name, scope.get("method", ""), str(code))
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(*labels).observe(time.monotonic() - start)
