"""Uvicorn set up for an exposed server: deadlines for request heads and idle connections.

Uvicorn times out an idle keep-alive connection (`timeout_keep_alive`) but not a connection that opened
and never finished its request head: a client sending half a header holds a socket (and a slot in the
event loop) for as long as it likes, so a thousand of them starve everyone else. `HeadTimeoutProtocol`
adds that deadline: from the moment a connection opens, or a response completes, the next request head
must be complete within `header_timeout_s`, or the connection is closed. The head's size is bounded by
h11 (16 KiB by default), its body by `serving.middleware` (size and per-part deadline).

The protocol is h11's (pure Python) whatever else is installed, since the deadline lives in its subclass.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rlvr_jax.serving.config import ServerConfig


class HeadTimeoutProtocol(H11Protocol):
    """h11 with a deadline for each request head (the class attribute is set per server, see below)."""

    header_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        """Closes the connection unless a request head arrived in time (then the request's own deadlines
        apply: the body's in the middleware, the generation's in the app)."""
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeadTimeoutProtocol]:
    """A HeadTimeoutProtocol subclass with this server's deadline (uvicorn instantiates the class)."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_server(app: Any, config: ServerConfig, *, host: str, port: int, log_level: str = "info") -> Any:
    """The uvicorn.Server for `app`, with the connection deadlines of `config`."""
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            http=protocol_class(config.header_timeout_s),
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # a float works
            # In-flight requests finish within the request timeout; after that shutdown goes on anyway.
            timeout_graceful_shutdown=int(config.request_timeout_s) + 5,
        )
    )
