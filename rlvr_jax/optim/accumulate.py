"""Micro-batched gradient accumulation, the guarded optimizer update, and jitting a step on a mesh.

Algorithm-blind plumbing: the loss comes in as a function of (params, micro-batch); `rlvr_jax.rl.update`
supplies GRPO's. Why it is built this way:
- Gradient accumulation sums micro-batch gradients under `lax.scan`; the caller divides every micro-batch
  loss by the whole batch's normaliser, so the sum is the full-batch loss and gradient, not a mean of
  micro-batch means.
- Micro-batches are strided, not contiguous (`split_rows`): rows are split over devices in contiguous
  blocks, so a contiguous split would put a whole micro-batch on a few devices.
- A non-finite loss or gradient skips the update (parameters and optimizer state unchanged, so the
  schedule does not advance either) and counts it in `state.skipped`. `state.step` counts calls, skipped or
  not, so it stays in step with the data; the number of applied updates is `step - skipped`.
- `jit_update` donates the state: the parameters and the optimizer moments are updated in place instead
  of being held twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlvr_jax import sharding
from rlvr_jax.models.lora import combine
from rlvr_jax.optim.state import TrainState, partition_trainable, train_state_shardings

Array = jax.Array
Batch = dict[str, Any]


def split_rows(x: Array, m: int, constraint: NamedSharding | None) -> Array:
    """[rows, ...] -> [m, rows / m, ...], micro-batch k = rows k, k + m, k + 2m, ...

    Strided, not contiguous: rows are split over devices in contiguous blocks, so a contiguous split would
    put a whole micro-batch on a few devices; strided, every device holds rows of every micro-batch.
    """
    y = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
    return y if constraint is None else jax.lax.with_sharding_constraint(y, constraint)


def split_micro_batches(
    batch: Batch, m: int, mesh: Mesh | None = None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> Batch:
    """Every array of `batch` split into `m` strided micro-batches (leading axis m)."""
    row_split = None if mesh is None else NamedSharding(mesh, PartitionSpec(None, sharding.batch_axes(rules)))
    return {k: split_rows(jnp.asarray(v), m, row_split) for k, v in batch.items()}


def accumulate_gradients(
    grad_fn: Callable[[Any, Batch], tuple[Any, Any]],
    params: Any,
    micro: Batch,
    param_shards: Any = None,
) -> tuple[Any, Any]:
    """Sums `grad_fn(params, micro-batch) -> (grads, aux)` over the micro-batches in float32.

    Returns the summed gradients and each micro-batch's aux stacked along a leading axis. With
    `param_shards` the running sum stays sharded like the parameters.
    """

    def add(total: Any, mb: Batch) -> tuple[Any, Any]:
        grads, aux = grad_fn(params, mb)
        total = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), total, grads)
        if param_shards is not None:
            total = jax.lax.with_sharding_constraint(total, param_shards)
        return total, aux

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return jax.lax.scan(add, zeros, micro)


def apply_gradients(
    state: TrainState, grads: Any, loss: Array, optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update, skipped when the loss or the gradient norm is non-finite.

    `grads` are those of the trainable parameters (`partition_trainable`: all of them, or the LoRA
    adapters alone); the frozen ones pass through unchanged.

    Returns the new state and {"grad_norm" (before clipping), "skipped" (1.0 when skipped)}.
    """
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    trainable, frozen = partition_trainable(state.params)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    params = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(
        params=combine(keep(params, trainable), frozen),
        opt_state=keep(opt_state, state.opt_state),
        step=state.step + 1,
        skipped=state.skipped + (~ok).astype(jnp.int32),
    )
    return new_state, {"grad_norm": grad_norm, "skipped": (~ok).astype(jnp.float32)}


def jit_per_structure(build: Callable[[Any], Callable[..., Any]]) -> Callable[..., Any]:
    """`fn(tree, *rest)` that jits `build(tree)` once per tree structure of its first argument.

    The sharded functions need the parameters' shardings, which come from their logical-axis metadata;
    taking them from the first call's arguments spares callers from passing the parameters twice.
    """
    compiled: dict[Any, Callable[..., Any]] = {}
    lock = threading.Lock()  # one jit per structure also when the warm-up lowers from another thread

    def jitted(tree: Any) -> Callable[..., Any]:
        key = jax.tree.structure(tree)
        with lock:
            if key not in compiled:
                compiled[key] = build(tree)
            return compiled[key]

    def call(tree: Any, *rest: Any) -> Any:
        return jitted(tree)(tree, *rest)

    call.lower = lambda tree, *rest: jitted(tree).lower(tree, *rest)  # as jax.jit's, for cost analysis
    return call


def jit_on_params(
    fn: Callable[[Any, Batch], Array],
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> Callable[[Any, Batch], Array]:
    """`fn(params, batch) -> [rows, ...]` jitted; with a mesh the parameters keep their logical-axis
    shardings and the result is sharded by rows like the batch (e.g. old / reference log-probs)."""
    if mesh is None:
        return jax.jit(fn)
    rows = sharding.batch_sharding(mesh, rules)

    def build(params: Any) -> Callable[..., Any]:
        shards = sharding.param_shardings(params, mesh, rules)
        return jax.jit(fn, in_shardings=(shards, rows), out_shardings=rows)

    return jit_per_structure(build)


def jit_update(
    fn: Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]],
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """`fn(state, batch) -> (state, metrics)` jitted with the state donated (do not use the state passed
    in afterwards).

    With a mesh, the state keeps its logical-axis shardings in and out (`train_state_shardings`, derived at
    the first call), batches are split by rows over the batch axes, metrics come back replicated. Each
    distinct batch shape (and set of batch keys) compiles once.
    """
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    rows = sharding.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def build(state: TrainState) -> Callable[..., Any]:
        shards = train_state_shardings(state.params, optimizer, mesh, rules)
        return jax.jit(fn, in_shardings=(shards, rows), out_shardings=(shards, replicated), donate_argnums=0)

    return jit_per_structure(build)
