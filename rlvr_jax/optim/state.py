"""The train state and where it lives: parameters, optimizer moments and counters, sharded by the
parameters' logical axes.

- `TrainState` holds the parameter state exactly as `nnx.split(model)` gives it (so the same tree goes back
  to the `Sampler` after a step), the optax state and two counters.
- Sharding is declared, not coded: parameter shardings come from their logical axes (`rlvr_jax.sharding`
  rules), optimizer moments take the shardings of the parameters they mirror. XLA inserts the
  collectives, so one device, a (data, fsdp, tensor) mesh and several processes run the same code.
- Master weights: `init_train_state` keeps the parameters in float32 by default whatever the checkpoint's
  storage dtype, and the model casts each weight to its compute dtype at use; `sampler_params` hands the
  sampler a copy in the dtypes the model reads (bf16 where it computes in bf16), `export_params` casts
  to a storage dtype.
- LoRA (`rlvr_jax.models.lora`): when the parameters hold adapters, only they train. `partition_trainable`
  splits (adapters, frozen base) by name; the optimizer state is built over the adapters alone (Adam's
  moments are adapter-sized), the update differentiates and changes only them, and a checkpoint holds
  them without the base (`checkpoint_view`, `from_checkpoint`). The frozen base is stored in the dtypes
  the model reads it in (bf16 under bf16 compute: the same rule as `sampler_params`, so the same logits),
  since float32 masters are only needed for weights that receive updates.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlvr_jax import sharding
from rlvr_jax.models import lora
from rlvr_jax.models.config import ModelConfig, resolve_dtype
from rlvr_jax.models.decoder import float32_params

logger = logging.getLogger(__name__)

Array = jax.Array


class TrainState(NamedTuple):
    """What one update reads and writes (a pytree; donated to the jitted step).

    params: the nnx parameter state (`nnx.split(model)[1]`), in the master dtype (with LoRA: the adapters
      in the master dtype, the frozen base in the dtypes the model reads it in).
    opt_state: the optax state of the trainable parameters (all of them, or the LoRA adapters alone); its
      parameter-shaped parts are sharded like the parameters they mirror.
    step: int32, train-step calls so far (skipped ones included).
    skipped: int32, calls whose update was skipped for a non-finite loss or gradient.
    """

    params: Any
    opt_state: Any
    step: Array
    skipped: Array

def partition_trainable(params: Any) -> tuple[Any, Any]:
    """(trainable, frozen) parameters: (LoRA adapters, base) when the tree holds adapters, else
    (params, None). `lora.combine` joins them back; the optimizer only ever sees the first part."""
    return lora.partition(params)


def checkpoint_view(state: TrainState) -> TrainState:
    """What a checkpoint stores of `state`: all of it, except that with LoRA the parameters are the
    adapters alone; the frozen base comes back from model.path on resume (`from_checkpoint`), so a
    checkpoint of a 7B run is megabytes of adapters and their moments, not the 7B weights again."""
    return state._replace(params=partition_trainable(state.params)[0])


def from_checkpoint(state: TrainState, restored: TrainState) -> TrainState:
    """`restored` (a restored `checkpoint_view`) with `state`'s frozen base put back under its parameters."""
    return restored._replace(params=lora.combine(restored.params, partition_trainable(state.params)[1]))


def stored_params(params: Any, master_dtype: str | Any | None, cfg: ModelConfig | None = None) -> Any:
    """The parameters as the train state keeps them: trainable floating leaves widened to `master_dtype`
    (never narrowed; None keeps them), and with LoRA and a `cfg` the frozen base in the dtypes the model
    reads it in. Works on arrays and, under `jax.eval_shape`, on shapes."""
    trainable, frozen = partition_trainable(params)
    if master_dtype is not None:
        target = resolve_dtype(master_dtype)

        def widen(x: Any) -> Any:
            if not jnp.issubdtype(x.dtype, jnp.floating):
                return x
            return x.astype(jnp.promote_types(x.dtype, target))

        trainable = jax.tree.map(widen, trainable)
    if frozen is not None and cfg is not None:
        frozen = sampler_params(frozen, cfg)
    return lora.combine(trainable, frozen)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)

def _follow_params(tree: Any, params: Any, param_shards: Any, replicated: NamedSharding) -> Any:
    """Shardings for an optimizer-state tree: each parameter-shaped subtree (Adam's mu, nu) gets the
    parameters' shardings; any other leaf (step counts) is replicated."""
    params_def = jax.tree.structure(params)

    def is_params(x: Any) -> bool:
        return jax.tree.structure(x) == params_def

    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_params)
    out = []
    for leaf in leaves:
        if is_params(leaf):
            out.append(param_shards)
            continue
        if np.ndim(leaf) > 0:
            logger.warning("optimizer-state leaf of shape %s is not parameter-shaped: replicated", leaf.shape)
        out.append(replicated)
    return jax.tree_util.tree_unflatten(treedef, out)

def train_state_shardings(
    params: Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> TrainState:
    """A TrainState of NamedShardings for `params` (a State or its `jax.eval_shape`) on `mesh`."""
    param_shards = sharding.param_shardings(params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    trainable = partition_trainable(params)[0]
    abstract_opt = jax.eval_shape(optimizer.init, trainable)
    trainable_shards = partition_trainable(param_shards)[0]
    opt_shards = _follow_params(abstract_opt, trainable, trainable_shards, replicated)
    return TrainState(param_shards, opt_shards, replicated, replicated)

def init_train_state(
    model: nnx.Module | Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    *,
    master_dtype: str | Any | None = "float32",
    cfg: ModelConfig | None = None,
) -> TrainState:
    """The initial state, placed on `mesh` by the logical-axis rules (or on the default device).

    model: a Decoder or its parameter state. master_dtype: dtype the trainer keeps trainable floating
    parameters in (None keeps the storage dtype); float64 parameters are never narrowed. cfg: the model's
    config (default: the Decoder's), which with LoRA sets the frozen base's dtypes (`stored_params`); the
    optimizer state covers the trainable parameters only (`partition_trainable`). On several processes
    every process passes the same values (same seed or checkpoint); each copies in only its own shards.
    """
    params = nnx.state(model) if isinstance(model, nnx.Module) else model
    cfg = cfg or getattr(model, "cfg", None)
    params = stored_params(params, master_dtype, cfg)
    init_opt = lambda p: optimizer.init(partition_trainable(p)[0])
    counters = (np.zeros((), np.int32), np.zeros((), np.int32))
    # The state owns fresh buffers: the step donates them, and the model passed in (often also the
    # sampler's or the frozen reference's parameters) must stay valid. A placement or a same-dtype cast can
    # return the very same arrays, hence the explicit copy.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    if mesh is None:
        params = jax.jit(copy)(params)
        return TrainState(params, jax.jit(init_opt)(params), *map(jnp.asarray, counters))
    shards = train_state_shardings(params, optimizer, mesh, rules)
    params = jax.jit(copy, out_shardings=shards.params)(sharding.put_on_mesh(params, shards.params))
    opt_state = jax.jit(init_opt, out_shardings=shards.opt_state)(params)
    step, skipped = (sharding.put_on_mesh(c, shards.step) for c in counters)
    return TrainState(params, opt_state, step, skipped)

def sampler_params(params: Any, cfg: ModelConfig) -> Any:
    """The parameters for the sampler: each floating leaf in the dtype the model reads it in.

    The model casts matmul weights, biases, embeddings and RMS scales to its compute dtype at every use, so
    a copy stored in that dtype gives bit-identical samples while each decode step, which is bound by
    reading the weights, reads half the bytes when the masters are float32 and the compute is bf16. The
    parameters it reads in float32 (`decoder.float32_params`: GPT-2's LayerNorm) keep the master dtype.
    Only a narrowing cast is made (bf16 masters with float32 compute stay bf16). Costs one copy of the
    weights in the compute dtype; leaves left as they are are the state's own buffers, which the next step
    donates: hand the sampler new parameters after every step.
    """
    wide, compute = float32_params(cfg), jnp.dtype(cfg.compute_dtype)

    def cast(path: tuple, x: Any) -> Any:
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path}
        narrower = jnp.issubdtype(x.dtype, jnp.floating) and compute.itemsize < x.dtype.itemsize
        return x.astype(compute) if narrower and not names & wide else x

    return jax.tree_util.tree_map_with_path(cast, params)


def export_params(params: Any, dtype: str | Any) -> Any:
    """Parameters cast to the sampler's storage dtype (e.g. `cfg.param_dtype`); shardings are kept.

    Where the dtype already matches, these are the state's own buffers, which the next train step donates:
    hand the sampler the new parameters after every step (as `Sampler.update_params` is meant to be used).
    """
    return _cast_floats(params, resolve_dtype(dtype))
