"""Prometheus metrics of the server, in a registry of its own.

A registry per app (not prometheus-client's global one) lets tests and embedders create several apps in
one process without "duplicated timeseries" errors, and /metrics shows exactly the server's series plus
the process collector. Route labels use the route's template, never the raw path, so a scan of random
URLs cannot grow the number of series.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a health check's milliseconds to a long CPU generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)


class ServerMetrics:
    """Every series the server exports; see each one's help text for what it counts."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "rlvr_serve_requests", "HTTP requests by route, method and status code",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "rlvr_serve_request_duration_seconds", "HTTP request latency (to the last byte)",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("rlvr_serve_requests_in_flight", "HTTP requests being handled", registry=r)
        self.queue_depth = Gauge(
            "rlvr_serve_queue_depth", "generation requests waiting for a batch", registry=r
        )
        self.queue_capacity = Gauge(
            "rlvr_serve_queue_capacity", "most generation requests that may wait (--max_queue)", registry=r
        )
        self.rejected = Counter(
            "rlvr_serve_rejected", "generation requests refused before running, by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "rlvr_serve_batch_size",
            "rows (choices) per batch run through the sampler (static engine), or slots in use per decode "
            "call (continuous engine)",
            buckets=_batch_buckets(max_batch), registry=r,
        )  # fmt: skip
        self.batch_duration = Histogram(
            "rlvr_serve_batch_duration_seconds",
            "wall time of one batch through the sampler (static engine), or of one decode call over the "
            "slots (continuous engine)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.active_slots = Gauge(
            "rlvr_serve_active_slots", "decode slots holding a request's row (continuous engine)", registry=r
        )
        self.slots = Gauge("rlvr_serve_slots", "decode slots (continuous engine: --max_batch)", registry=r)
        self.prompt_tokens = Counter("rlvr_serve_prompt_tokens", "prompt tokens of requests run", registry=r)
        self.generated_tokens = Counter(
            "rlvr_serve_generated_tokens", "tokens generated and returned to clients", registry=r
        )
        self.tokens_per_second = Gauge(
            "rlvr_serve_generated_tokens_per_second",
            "tokens per second of the last batch or decode call (rate of rlvr_serve_generated_tokens_total: "
            "the average)",
            registry=r,
        )
        self.ttft = Histogram(
            "rlvr_serve_time_to_first_token_seconds", "from a request's arrival to its first generated token",
            buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            "rlvr_serve_ready", "1 once the model is loaded and every bucket compiled", registry=r
        )
        self.compilations = Gauge(
            "rlvr_serve_compiled_functions",
            "jitted sampler functions built (constant after start-up)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _batch_buckets(max_batch: int) -> list[float]:
    """1, 2, 4, ... up to max_batch (and max_batch itself), so every batch size lands in a sensible bucket."""
    out, b = [], 1
    while b < max_batch:
        out.append(float(b))
        b *= 2
    out.append(float(max_batch))
    return out
