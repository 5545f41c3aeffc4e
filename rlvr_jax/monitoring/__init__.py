"""Run monitoring: metrics sinks (jsonl, TensorBoard, W&B, Prometheus, JSON logs), progress, MFU, cost,
reward plots, and drift detection between training data and live traffic."""

from rlvr_jax.monitoring.cost import PRICES, CostTracker, device_price
from rlvr_jax.monitoring.drift import (
    DriftConfig,
    DriftMonitor,
    ReferenceProfile,
    build_profile,
    compare,
)
from rlvr_jax.monitoring.exporters import JsonLogSink, PrometheusSink, prometheus_name
from rlvr_jax.monitoring.metrics import (
    MetricsWriter,
    PhaseTimer,
    flatten_metrics,
    mfu,
    new_run_id,
    peak_flops,
    plot_rewards,
    read_metrics,
    step_flops,
    truncate_after,
)
from rlvr_jax.progress import Progress  # its home is rlvr_jax.progress; kept here for old imports

__all__ = [
    "PRICES",
    "CostTracker",
    "DriftConfig",
    "DriftMonitor",
    "JsonLogSink",
    "MetricsWriter",
    "PhaseTimer",
    "Progress",
    "PrometheusSink",
    "ReferenceProfile",
    "build_profile",
    "compare",
    "device_price",
    "flatten_metrics",
    "mfu",
    "new_run_id",
    "peak_flops",
    "plot_rewards",
    "prometheus_name",
    "read_metrics",
    "step_flops",
    "truncate_after",
]
