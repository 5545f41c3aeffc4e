"""The functional RL core: advantages, the policy loss and its parts, and dynamic sampling.

Pure functions over [rows, T] arrays (rows = prompts * G, group members adjacent); the trainer composes
them. Advantage estimators and aggregation modes are chosen by name from the config.
"""

from rlvr_jax.rl.advantages import (
    get_advantage_fn,
    group_advantages,
    register_advantage,
    registered_advantages,
)
from rlvr_jax.rl.dynamic_sampling import FilledBatch, fill_batch, group_keep_mask
from rlvr_jax.rl.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LossConfig,
    aggregate,
    clipped_surrogate,
    kl_estimate,
    log_importance_ratio,
    masked_mean,
    policy_loss,
    token_entropy,
    truncated_is_weights,
)

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "FilledBatch",
    "LossConfig",
    "aggregate",
    "clipped_surrogate",
    "fill_batch",
    "get_advantage_fn",
    "group_advantages",
    "group_keep_mask",
    "kl_estimate",
    "log_importance_ratio",
    "masked_mean",
    "policy_loss",
    "register_advantage",
    "registered_advantages",
    "token_entropy",
    "truncated_is_weights",
]
