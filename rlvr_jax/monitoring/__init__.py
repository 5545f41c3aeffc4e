"""Run monitoring: metrics to metrics.jsonl / TensorBoard / W&B, progress bar, MFU, reward plots."""

from rlvr_jax.monitoring.metrics import (
    MetricsWriter,
    PhaseTimer,
    Progress,
    flatten_metrics,
    mfu,
    new_run_id,
    peak_flops,
    plot_rewards,
    read_metrics,
    step_flops,
    truncate_after,
)

__all__ = [
    "MetricsWriter",
    "PhaseTimer",
    "Progress",
    "flatten_metrics",
    "mfu",
    "new_run_id",
    "peak_flops",
    "plot_rewards",
    "read_metrics",
    "step_flops",
    "truncate_after",
]
