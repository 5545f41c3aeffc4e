"""The optimizer: AdamW with global-norm clipping and a warmup + cosine (or constant) schedule.

Master weights: the train state keeps parameters in float32 by default whatever the checkpoint's storage
dtype (`rlvr_jax.optim.state`), because Adam updates at RL learning rates (1e-6 relative to weights of
1e-2) are below bf16's resolution and would vanish in bf16 storage.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping and a warmup + cosine (or constant) learning-rate schedule.

    learning_rate: the peak rate, reached at the end of warmup.
    warmup_steps: linear warmup length; update k (0-based) uses learning_rate * (k + 1) / warmup_steps, so
      the first update already moves (a rate of 0 would waste a rollout batch).
    total_steps: the update at which the cosine reaches `end_lr_ratio * learning_rate` (and stays there).
    schedule: "cosine" or "constant" (warmup, then flat).
    weight_decay: decoupled (AdamW) decay, applied to weight matrices and embeddings only; norm scales and
      biases are not decayed (decaying a norm scale towards 0 shrinks the activations it feeds).
    max_grad_norm: clip the global gradient norm to this value; None disables clipping.
    micro_batches: gradient-accumulation steps per update (rows must divide by it); passed to
      `make_train_step`.
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    total_steps: int = 1000
    schedule: str = "constant"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    micro_batches: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps < 1:
            problems.append(f"total_steps must be >= 1, got {self.total_steps}")
        if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
            problems.append(
                f"a cosine schedule needs total_steps > warmup_steps, got {self.total_steps} <= "
                f"{self.warmup_steps}"
            )
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            problems.append(f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if not self.weight_decay >= 0.0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            problems.append(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if not self.eps > 0.0:
            problems.append(f"eps must be > 0, got {self.eps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0.0:
            problems.append(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}")
        if self.micro_batches < 1:
            problems.append(f"micro_batches must be >= 1, got {self.micro_batches}")
        if problems:
            raise ValueError("invalid OptimConfig: " + "; ".join(problems))

def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """The learning rate as a function of the number of updates applied so far (optax's `count`)."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    end = cfg.end_lr_ratio * peak
    decay = max(cfg.total_steps - warmup, 1)

    def schedule(count: Array | int) -> Array:
        count = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum((count + 1.0) / max(warmup, 1), 1.0)
        if cfg.schedule == "constant":
            return warm
        progress = jnp.clip((count - warmup) / decay, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count < warmup, warm, cosine)

    return schedule

def _leaf_name(path: tuple[Any, ...]) -> str:
    """The parameter's own name (last dict key) from a path into an nnx State ('value' attr excluded)."""
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] if names else ""

def decay_mask(params: Any) -> Any:
    """True for parameters that take weight decay: everything but norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not _leaf_name(path).endswith(("norm", "bias")), params
    )

def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW under `make_schedule(cfg)`."""
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)
