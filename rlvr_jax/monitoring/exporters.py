"""Training metrics for Prometheus (scraped or pushed) and as structured JSON log lines.

Both are `Sink`s for `MetricsWriter`, so they see exactly the numbers metrics.jsonl records.

Prometheus: every scalar a step logs becomes a gauge `rlvr_train_<key>` labelled with the run id, where
the key's "/" becomes "_" and a leading "train/" is dropped ("reward/mean" -> `rlvr_train_reward_mean`,
"train/kl" -> `rlvr_train_kl`, "cost/usd_total" -> `rlvr_train_cost_usd_total`), plus `rlvr_train_step`,
`rlvr_train_last_step_timestamp_seconds` (alerts on a stalled run use it) and `rlvr_train_finished` (1
after the run ended, so a finished run left in a Pushgateway does not look stalled). The dashboards and alert
rules in deploy/monitoring are written against these names. Two ways out:
- an HTTP endpoint (`logging.prometheus_port`) for long runs that Prometheus can reach and scrape;
- a Pushgateway (`logging.pushgateway`, host:port) for batch jobs that Prometheus cannot reach or that end
  between scrapes; pushes are rate-limited and the last one happens at close, grouped by run id.
A Pushgateway that is down costs a warning, never the run.

JSON logs (`logging.json_logs`): one object per line on stderr, {"ts", "level", "event", "run_id", "step",
...}, for log aggregation (Loki, Cloud Logging, Elasticsearch). Steps are "step" events with every metric;
`JsonLogSink.event` writes the others (start, evaluation, checkpoint, preemption, end).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any, TextIO

Number = int | float
PREFIX = "rlvr_train_"


def prometheus_name(key: str) -> str:
    """The gauge name of a metric key (see the module docstring); always a valid Prometheus name."""
    key = key.removeprefix("train/")
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", key.replace("/", "_"))


class PrometheusSink:
    """Gauges of the latest step in a registry of their own, served over HTTP and/or pushed.

    port: serve /metrics on this port (0 picks a free one, see `.port`); None serves nothing.
    pushgateway: "host:port" of a Pushgateway; None pushes nothing. push_every_s: at most one push per
    this many seconds while running (the last step is always pushed at close).
    """

    def __init__(
        self,
        run_id: str,
        *,
        port: int | None = None,
        pushgateway: str | None = None,
        job: str = "rlvr-train",
        push_every_s: float = 15.0,
    ):
        from prometheus_client import CollectorRegistry, Gauge

        self.run_id, self.job, self.pushgateway, self.push_every_s = run_id, job, pushgateway, push_every_s
        self.registry = CollectorRegistry()
        self._gauge_cls = Gauge
        self._gauges: dict[str, Any] = {}
        self._last_push = -math.inf
        self._push_failed = False
        self._server = None
        self.port: int | None = None
        if port is not None:
            from prometheus_client import start_http_server

            self._server, _ = start_http_server(port, registry=self.registry)
            self.port = self._server.server_port

    def _gauge(self, name: str, doc: str):
        if name not in self._gauges:
            self._gauges[name] = self._gauge_cls(name, doc, ["run_id"], registry=self.registry)
        return self._gauges[name].labels(run_id=self.run_id)

    def write(self, step: int, row: Mapping[str, Number | None]) -> None:
        self._gauge(PREFIX + "finished", "1 once the run has ended (its last push), else 0").set(0)
        self._gauge(PREFIX + "step", "the last completed training step").set(step)
        self._gauge(PREFIX + "last_step_timestamp_seconds", "unix time of the last step").set(time.time())
        for key, value in row.items():
            if value is None or isinstance(value, bool):
                continue
            self._gauge(prometheus_name(key), f"training metric {key!r} of the last step").set(float(value))
        if self.pushgateway and time.monotonic() - self._last_push >= self.push_every_s:
            self.push()

    def push(self) -> None:
        """Sends the registry to the Pushgateway now (grouped by run id); a failure only warns, once."""
        if not self.pushgateway:
            return
        from prometheus_client import push_to_gateway

        self._last_push = time.monotonic()
        try:
            push_to_gateway(self.pushgateway, job=self.job, registry=self.registry,
                            grouping_key={"run_id": self.run_id}, timeout=5)  # fmt: skip
        except OSError as e:
            if not self._push_failed:
                message = f"Pushgateway {self.pushgateway} unreachable ({e}); training goes on"
                warnings.warn(message, stacklevel=2)
            self._push_failed = True

    def close(self) -> None:
        """Marks the run finished (alerts on stalled runs skip it) and pushes one last time."""
        if self._gauges:
            self._gauge(PREFIX + "finished", "1 once the run has ended (its last push), else 0").set(1)
        self.push()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class JsonLogSink:
    """Structured log lines: one JSON object per event, with the run id and step, on `stream`."""

    def __init__(self, run_id: str, stream: TextIO | None = None):
        self.run_id = run_id
        self.stream = stream

    def event(self, event: str, step: int | None = None, level: str = "info", **fields: Any) -> None:
        record = {
            "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
            "run_id": self.run_id,
            "step": step,
        }
        record.update({k: _plain(v) for k, v in fields.items()})
        out = self.stream or sys.stderr
        out.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        out.flush()

    def write(self, step: int, row: Mapping[str, Number | None]) -> None:
        self.event("step", step, **row)

    def close(self) -> None:
        pass


def _plain(value: Any) -> Any:
    """JSON-safe: NaN / inf become None (strict JSON, as metrics.jsonl writes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
