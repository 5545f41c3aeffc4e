"""The GRPO core: the algorithm, readable top to bottom, as pure functions over [rows, ...] arrays.

  advantages.py        rewards [rows] -> advantages: GRPO, Dr.GRPO, RLOO, batch-normalised (by name)
  losses.py            the policy loss and its parts: importance ratios (token / GSPO sequence), PPO clip
                       with DAPO clip-higher and dual clip, truncated importance sampling, KL estimators,
                       entropy bonus, the four aggregations (aggregations and KL estimators by name)
  batch.py             one rollout batch from the sampler to the loss: row-aligned arrays, then the
                       update's [rows, prompt + completion] batch
  update.py            the update: completion log-probs -> policy loss -> gradients summed over
                       micro-batches -> one guarded optimizer step; mu epochs over one rollout batch
  dynamic_sampling.py  DAPO's dynamic sampling: drop zero-variance groups and refill the batch

Rows are prompts * G with the G completions of a prompt adjacent (row i * G + g). The plumbing under the
update (optimizer, train state and its shardings, micro-batch accumulation, the memory probe) lives in
`rlvr_jax.optim`; the completion log-probs in `rlvr_jax.models.logprobs`; the loop that drives all of
this in `rlvr_jax.trainer`. Anything chosen by name from a config is registered in a
`rlvr_jax.registry.Registry`: `register_advantage`, `register_aggregation`, `register_kl_estimator`.
"""

from rlvr_jax.rl.advantages import (
    ADVANTAGES,
    get_advantage_fn,
    group_advantages,
    register_advantage,
    registered_advantages,
)
from rlvr_jax.rl.batch import batch_from_rollout, batch_from_rows, rollout_rows
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
    register_aggregation,
    register_kl_estimator,
    truncated_is_weights,
)
from rlvr_jax.rl.update import make_logprob_fn, make_train_step, train_step, update_on_rollout

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "FilledBatch",
    "LossConfig",
    "aggregate",
    "batch_from_rollout",
    "batch_from_rows",
    "clipped_surrogate",
    "fill_batch",
    "get_advantage_fn",
    "group_advantages",
    "group_keep_mask",
    "kl_estimate",
    "log_importance_ratio",
    "make_logprob_fn",
    "make_train_step",
    "masked_mean",
    "policy_loss",
    "register_advantage",
    "register_aggregation",
    "register_kl_estimator",
    "registered_advantages",
    "rollout_rows",
    "train_step",
    "truncated_is_weights",
    "update_on_rollout",
]
