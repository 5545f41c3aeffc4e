"""Outcome advantages from group-sampled rewards: GRPO, Dr.GRPO, RLOO and batch-normalised, chosen by name.

Layout: `rewards` is [rows] with rows = prompts * G and the G completions of one prompt adjacent (row
i * G + g), so a reshape to [prompts, G] gives the groups. Every estimator is one call of
`group_advantages` with different switches; `get_advantage_fn(name)` returns it with a preset's switches
bound (any of them can still be overridden by keyword).

With r_g the rewards of one group, mean_g / std_g their mean / standard deviation:

  grpo        A = (r - mean_g) / (std_g + eps)              DeepSeekMath (Shao et al. 2024), eq. in 4.1.2
  dr_grpo     A =  r - mean_g                               Dr.GRPO (Liu et al. 2025): no std, whose
                                                            division up-weights too easy / too hard prompts
  rloo        A =  r - mean of the other G - 1 rewards      RLOO (Ahmadian et al. 2024)
                = G / (G - 1) * (r - mean_g)
  batch_norm  A = (r - mean_g) / (std_batch + eps)          REINFORCE++ with baseline (Hu et al. 2025):
                                                            the std over the whole batch of the centred
                                                            rewards (`batch_std_of="centred"`); "Tricks or
                                                            Traps" (Liu et al. 2025, Lite PPO) divides by
                                                            the batch std of the raw rewards instead
                                                            (`batch_std_of="rewards"`)

The std is the population std (`ddof=0`), as the plain "standard deviation of the group" of the GRPO
paper reads; implementations built on `torch.std` use the unbiased one, `ddof=1`, which scales GRPO's
advantages by sqrt((G - 1) / G). Both are a switch.

A group whose rewards are all equal carries no learning signal (every baseline equals its rewards); its
advantages are exactly 0, never NaN and never the rounding noise of r - mean_g (the mean of equal floats
need not equal them), so such groups contribute nothing to the policy gradient whatever the estimator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from rlvr_jax.registry import Registry

Array = jax.Array
AdvantageFn = Callable[..., Array]

Baseline = Literal["mean", "leave_one_out"]
Scale = Literal["none", "group", "batch"]


def grouped(rewards: Array, group_size: int) -> Array:
    """[rows] -> [prompts, G], checking that rows is a whole number of groups."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [rows], got shape {rewards.shape}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards are not a whole number of groups of {group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(
    rewards: Array,
    group_size: int,
    *,
    baseline: Baseline = "mean",
    scale: Scale = "group",
    batch_std_of: Literal["centred", "rewards"] = "centred",
    ddof: int = 0,
    eps: float = 1e-6,
) -> Array:
    """Per-row advantages [rows] = (r - baseline) / scale; see the module docstring for the presets.

    baseline: "mean" (the group mean, GRPO) or "leave_one_out" (the mean of the other G - 1 rewards, RLOO:
      an unbiased baseline because it does not depend on the row's own sample).
    scale: "none" (Dr.GRPO, RLOO), "group" (divide by std_g + eps, GRPO) or "batch" (divide by the std over
      all rows + eps; of the centred rewards or of the raw rewards, `batch_std_of`).
    ddof: 0 for the population std, 1 for the unbiased one (used by "group" and "batch").
    """
    groups = grouped(rewards, group_size)
    mean = jnp.mean(groups, axis=1, keepdims=True)
    if baseline == "mean":
        centred = groups - mean
    elif baseline == "leave_one_out":
        if group_size < 2:
            raise ValueError("a leave-one-out baseline needs groups of at least 2")
        # r - (sum_g - r) / (G - 1) = G / (G - 1) * (r - mean_g)
        centred = (groups - mean) * (group_size / (group_size - 1))
    else:
        raise ValueError(f"unknown baseline {baseline!r}; use 'mean' or 'leave_one_out'")

    if scale == "none":
        adv = centred
    elif scale == "group":
        # where() keeps G == 1 with ddof == 1 (0 / 0) out of the result: such groups are degenerate anyway.
        std = jnp.std(groups, axis=1, keepdims=True, ddof=ddof)
        adv = centred / (jnp.where(jnp.isfinite(std), std, 0.0) + eps)
    elif scale == "batch":
        if batch_std_of == "centred":
            std = jnp.std(groups - mean, ddof=ddof)
        elif batch_std_of == "rewards":
            std = jnp.std(groups, ddof=ddof)
        else:
            raise ValueError(f"unknown batch_std_of {batch_std_of!r}; use 'centred' or 'rewards'")
        adv = centred / (jnp.where(jnp.isfinite(std), std, 0.0) + eps)
    else:
        raise ValueError(f"unknown scale {scale!r}; use 'none', 'group' or 'batch'")

    degenerate = jnp.max(groups, axis=1, keepdims=True) == jnp.min(groups, axis=1, keepdims=True)
    return jnp.where(degenerate, 0.0, adv).reshape(-1)


ADVANTAGES: Registry[AdvantageFn] = Registry("advantage")


def register_advantage(name: str, fn: AdvantageFn) -> AdvantageFn:
    """Makes `fn(rewards, group_size, **options) -> [rows]` available to configs (`rl.advantage`)."""
    return ADVANTAGES.register(name, fn)


def get_advantage_fn(name: str) -> AdvantageFn:
    """The advantage estimator registered as `name`: `fn(rewards [rows], group_size, **options) -> [rows]`."""
    return ADVANTAGES.get(name)


def registered_advantages() -> list[str]:
    return ADVANTAGES.names()


def _preset(**switches: Any) -> AdvantageFn:
    return functools.partial(group_advantages, **switches)


register_advantage("grpo", _preset(baseline="mean", scale="group"))
register_advantage("dr_grpo", _preset(baseline="mean", scale="none"))
register_advantage("rloo", _preset(baseline="leave_one_out", scale="none"))
register_advantage("batch_norm", _preset(baseline="mean", scale="batch", batch_std_of="centred"))
