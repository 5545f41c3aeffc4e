"""The GRPO update: the policy loss of a rollout batch under the current parameters, and the optimizer
updates one rollout batch makes. Pure functions over pytrees; `make_train_step` jits one.

`train_step(state, batch)` computes the completion tokens' log-probs (`rlvr_jax.models.logprobs`, chunked
over the vocabulary), the policy loss (`rlvr_jax.rl.losses`), and sums its gradient over strided
micro-batches before one guarded AdamW update (`rlvr_jax.optim.accumulate`). Every micro-batch loss is
divided by the whole batch's normaliser, so the sum is the full-batch loss. `update_on_rollout` runs mu
epochs of such updates over one rollout batch, with old and reference log-probs computed once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rlvr_jax import sharding
from rlvr_jax.models.logprobs import token_logprobs
from rlvr_jax.models.lora import combine
from rlvr_jax.optim.accumulate import (
    accumulate_gradients,
    apply_gradients,
    jit_on_params,
    jit_update,
    split_micro_batches,
)
from rlvr_jax.optim.state import TrainState, partition_trainable
from rlvr_jax.rl.batch import Batch, check_batch
from rlvr_jax.rl.losses import LossConfig, aggregation_denominator, policy_loss

Array = jax.Array


def completion_logprobs(
    params: Any,
    batch: Mapping[str, Any],
    *,
    graphdef: nnx.GraphDef,
    temperature: float,
    chunk: int = 128,
) -> Array:
    """[rows, N] log-probs of a batch's completion tokens (0 off the completion mask)."""
    _, _, N = check_batch(batch)
    lp, _ = token_logprobs(
        graphdef, params, batch["tokens"], batch["attn_mask"], temperature, completion_len=N, chunk=chunk
    )
    return jnp.where(batch["completion_mask"], lp, 0.0)


def make_logprob_fn(
    graphdef: nnx.GraphDef,
    *,
    temperature: float,
    chunk: int = 128,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> Callable[[Any, Batch], Array]:
    """Jitted `fn(params, batch) -> [rows, N]`: old log-probs (once per rollout batch, before the first of
    several updates) and reference log-probs (frozen reference parameters; only needed when beta > 0).

    With a mesh, the parameters keep their logical-axis shardings and the result is sharded by rows like
    the batch.
    """
    fn = functools.partial(completion_logprobs, graphdef=graphdef, temperature=temperature, chunk=chunk)
    return jit_on_params(fn, mesh, rules)


def _combine(metrics: dict[str, Array], tokens: Array) -> dict[str, Array]:
    """Per-micro-batch metrics [M] -> one value each: losses add (they share the global normaliser),
    extremes take min / max, means are weighted by each micro-batch's token count."""
    total = jnp.sum(tokens)
    has = tokens > 0
    out = {}
    for name, v in metrics.items():
        if name in ("loss", "pg_loss"):
            out[name] = jnp.sum(v)
        elif name == "ratio_min":
            out[name] = jnp.where(total > 0, jnp.min(jnp.where(has, v, jnp.inf)), 1.0)
        elif name == "ratio_max":
            out[name] = jnp.where(total > 0, jnp.max(jnp.where(has, v, -jnp.inf)), 1.0)
        else:
            out[name] = jnp.sum(jnp.where(has, v, 0.0) * tokens) / jnp.maximum(total, 1.0)
    return out


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    temperature: float,
    micro_batches: int = 1,
    chunk: int = 128,
    remat: str | None = None,
    log_entropy: bool = False,
    schedule: optax.Schedule | None = None,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update on `batch` (see `rlvr_jax.rl.batch` for its layout). Pure; jit it.

    The rows are split into `micro_batches` strided micro-batches whose gradients are summed under
    `lax.scan`; the clipped AdamW update is applied unless the loss or a gradient is non-finite.
    log_entropy: compute the exact per-token entropy (one more vocabulary pass per chunk) for the metric;
      it is always computed when `loss_config.entropy_coef` != 0. schedule: the optimizer's learning-rate
      schedule, for the `learning_rate` metric. mesh / rules: keep micro-batches split over the batch axes
      and the gradient sum sharded like the parameters.

    With LoRA adapters in the parameters only they are differentiated and updated (`partition_trainable`).

    Metrics: policy_loss's (losses summed over micro-batches, means token-weighted), grad_norm (before
    clipping), skipped (1.0 when the update was skipped), tokens, learning_rate (with a schedule).
    """
    rows, _, N = check_batch(batch)
    if micro_batches < 1 or rows % micro_batches:
        raise ValueError(f"{rows} rows do not split into {micro_batches} micro-batches")
    with_entropy = log_entropy or loss_config.entropy_coef != 0.0
    normalizer = aggregation_denominator(batch["completion_mask"], loss_config.aggregation)

    def loss_fn(params: Any, mb: Batch) -> tuple[Array, dict[str, Array]]:
        lp, ent = token_logprobs(
            graphdef, params, mb["tokens"], mb["attn_mask"], temperature,
            completion_len=N, chunk=chunk, with_entropy=with_entropy, remat=remat,
        )  # fmt: skip
        return policy_loss(
            lp, mb.get("old_logprobs"), mb["advantages"], mb["completion_mask"], loss_config,
            ref_logprobs=mb.get("ref_logprobs"), sampler_logprobs=mb.get("sampler_logprobs"),
            entropy=ent, normalizer=normalizer,
        )  # fmt: skip

    # Gradients of the trainable parameters only: with LoRA the adapters, the frozen base a constant.
    trainable, frozen = partition_trainable(state.params)

    def grad_fn(trainable: Any, mb: Batch) -> tuple[Any, tuple[dict[str, Array], Array]]:
        with_frozen = lambda t, mb: loss_fn(combine(t, frozen), mb)
        grads, metrics = jax.grad(with_frozen, has_aux=True)(trainable, mb)
        return grads, (metrics, jnp.sum(mb["completion_mask"].astype(jnp.float32)))

    param_shards = None
    if mesh is not None:
        param_shards = partition_trainable(sharding.param_shardings(state.params, mesh, rules))[0]
    micro = split_micro_batches(batch, micro_batches, mesh, rules)
    grads, (per_micro, tokens) = accumulate_gradients(grad_fn, trainable, micro, param_shards)
    metrics = _combine(per_micro, tokens)
    new_state, update_metrics = apply_gradients(state, grads, metrics["loss"], optimizer)
    metrics |= update_metrics | {"tokens": jnp.sum(tokens)}
    if schedule is not None:
        metrics["learning_rate"] = schedule(state.step - state.skipped)  # the rate this update used
    return new_state, metrics


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    **switches: Any,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """`train_step` with its switches bound (temperature, micro_batches, chunk, remat, log_entropy,
    schedule), jitted with the state donated (`rlvr_jax.optim.jit_update`: do not use the state passed in
    afterwards). Each distinct batch shape compiles once."""
    fn = functools.partial(
        train_step, graphdef=graphdef, optimizer=optimizer, loss_config=loss_config, mesh=mesh, rules=rules,
        **switches,
    )  # fmt: skip
    return jit_update(fn, optimizer, mesh, rules)


@functools.cache
def _row_picker(k: int, n: int, target: NamedSharding | None) -> Callable[[Batch], Batch]:
    """Jitted `batch -> rows k, k + n, ...` (cached: one compile per minibatch index and batch shape)."""
    return jax.jit(lambda b: jax.tree.map(lambda x: x[k::n], b), out_shardings=target)


def update_on_rollout(
    step_fn: Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]],
    state: TrainState,
    batch: Batch,
    *,
    epochs: int = 1,
    minibatches: int = 1,
    logprob_fn: Callable[[Any, Batch], Array] | None = None,
    ref_params: Any = None,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    behaviour_params: Any = None,
) -> tuple[TrainState, list[dict[str, Array]]]:
    """`epochs` (PPO's mu) passes over one rollout batch, `minibatches` optimizer updates per pass.

    Old log-probs are computed once, with the parameters that sampled the batch, before the first update:
    every later update measures its importance ratio against them (with a single update they are not
    needed: the loss uses the current log-probs, ratio 1). Reference log-probs are computed once when
    `ref_params` are given. Minibatch k takes rows k, k + minibatches, ... (strided, as micro-batches).
    Returns the new state and one metrics dict per update.

    behaviour_params: the parameters that sampled the batch when they are not `state.params` (one-step
    off-policy rollouts: the trainer's `rl.async_rollouts` samples step n + 1 while step n updates). The
    old log-probs then come from them, also with a single update, so that the importance ratio is
    pi_current / pi_sampling and PPO's clip bounds how far the stale samples move the policy; with
    `state.params` instead the ratio would start at 1 and ignore the lag. They may be the sampler's
    compute-dtype copy (`rlvr_jax.optim.sampler_params`): the model casts its weights to the compute
    dtype at every use, so the log-probs equal those of the masters they were cast from.
    """
    if epochs < 1 or minibatches < 1:
        raise ValueError(f"epochs and minibatches must be >= 1, got {epochs}, {minibatches}")
    batch = dict(batch)
    if behaviour_params is not None and "old_logprobs" not in batch:
        if logprob_fn is None:
            raise ValueError("behaviour_params need logprob_fn (make_logprob_fn) for their old log-probs")
        batch["old_logprobs"] = logprob_fn(behaviour_params, batch)
    needs_old = epochs * minibatches > 1 and "old_logprobs" not in batch
    needs_ref = ref_params is not None and "ref_logprobs" not in batch
    if (needs_old or needs_ref) and logprob_fn is None:
        raise ValueError("old or reference log-probs are needed: pass logprob_fn (make_logprob_fn)")
    if needs_old:
        batch["old_logprobs"] = logprob_fn(state.params, batch)
    if needs_ref:
        batch["ref_logprobs"] = logprob_fn(ref_params, batch)
    target = None if mesh is None else sharding.batch_sharding(mesh, rules)
    parts = [batch]
    if minibatches > 1:
        parts = [_row_picker(k, minibatches, target)(batch) for k in range(minibatches)]
    history = []
    for _ in range(epochs):
        for part in parts:
            state, metrics = step_fn(state, part)
            history.append(metrics)
    return state, history
