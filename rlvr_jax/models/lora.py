"""LoRA: low-rank adapters on the decoder's projections, switched on by `ModelConfig.lora_rank`.

Why it is built this way:
- Adapters are ordinary parameters of `decoder.Layers` (`q_lora_a`, `q_lora_b`, ...), stacked on the
  `layers` axis like their base weight, with logical axes that shard them like it: A [layers, in..., r]
  takes the base's input axes, B [layers, r, out...] its output axes, and the rank axis (`lora_rank`) is
  never split. So the parameter tree, the sharding rules, the sampler and checkpoints need no second code
  path, and a tensor-parallel base projection has its adapter split the same way.
- The forward adds (alpha / r) * (x @ A) @ B to the base projection (`add_delta`): training never forms
  the merged weight W + s * A @ B, whose gradient (and its activations) would be the size of W.
- B starts at zero, so a fresh adapter gives exactly the base model's logits; A is drawn as PEFT draws it
  (uniform within +-1/sqrt(fan_in)), so B's first gradient is not zero.
- What trains is chosen by name (`partition`): with adapters present only they are differentiated,
  updated, given optimizer moments and checkpointed (`rlvr_jax.optim.state`); the base stays frozen.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models.config import LORA_INPUT_DIMS, ModelConfig

Array = jax.Array
SUFFIXES = ("_lora_a", "_lora_b")
RANK_AXIS = "lora_rank"  # the logical name of the rank axis: no sharding rule maps it, so it is replicated


def adapter_names(target: str) -> tuple[str, str]:
    """The parameter names of `target`'s adapters (A, B), e.g. ('q_lora_a', 'q_lora_b')."""
    return f"{target}_lora_a", f"{target}_lora_b"


def is_adapter(name: str) -> bool:
    return name.endswith(SUFFIXES)


def adapter_layout(
    target: str, base_shape: tuple[int, ...], base_axes: tuple[str, ...], rank: int
) -> tuple[tuple[tuple[int, ...], tuple[str, ...]], tuple[tuple[int, ...], tuple[str, ...]]]:
    """((A's shape, axes), (B's shape, axes)) for a stacked base weight [layers, in..., out...].

    A copies the base's layers and input axes and appends the rank, B puts the rank before the base's
    output axes: each is sharded exactly where the base weight is along the axes they share.
    """
    n = LORA_INPUT_DIMS[target]
    layers, inputs, outputs = base_shape[:1], base_shape[1 : 1 + n], base_shape[1 + n :]
    layer_axis, in_axes, out_axes = base_axes[:1], base_axes[1 : 1 + n], base_axes[1 + n :]
    a = ((*layers, *inputs, rank), (*layer_axis, *in_axes, RANK_AXIS))
    b = ((*layers, rank, *outputs), (*layer_axis, RANK_AXIS, *out_axes))
    return a, b


def init_a(key: Array, shape: tuple[int, ...], fan_in: int, dtype: Any) -> Array:
    """A's initial value: uniform within +-1/sqrt(fan_in), PEFT's default (kaiming_uniform, a=sqrt(5))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def add_delta(cfg: ModelConfig, p: dict[str, Array], target: str, x: Array, y: Array) -> Array:
    """y + (alpha / r) * (x @ A) @ B for one layer's `target` projection (y itself when p has no adapter).

    x: [..., in...] the projection's input, y: [..., out...] the base projection's output. The scale is
    applied to the rank-r intermediate, the smallest tensor of the three.
    """
    a_name, b_name = adapter_names(target)
    if a_name not in p:
        return y
    dt = cfg.compute_dtype
    xa = jnp.tensordot(x.astype(dt), p[a_name].astype(dt), axes=LORA_INPUT_DIMS[target])
    xa = xa * jnp.asarray(cfg.lora_scale, dt)
    return y + jnp.tensordot(xa, p[b_name].astype(dt), axes=1).astype(y.dtype)


def delta_weight(target: str, a: Array, b: Array, scale: float) -> Array:
    """scale * A @ B in the base weight's layout ([in..., out...], or stacked with a leading layers axis),
    in float32 (or wider) at full precision."""
    wide = jnp.promote_types(a.dtype, jnp.float32)
    product = lambda a, b: jnp.tensordot(a, b, axes=1, precision=jax.lax.Precision.HIGHEST)
    a, b = jnp.asarray(a, wide), jnp.asarray(b, wide)
    stacked = a.ndim == LORA_INPUT_DIMS[target] + 2
    return scale * (jax.vmap(product)(a, b) if stacked else product(a, b))


def merge_layer(cfg: ModelConfig, layer: dict[str, Array]) -> dict[str, Array]:
    """One layer's parameters (or the stacked layers') with every adapter folded into its base weight,
    W + (alpha / r) * A @ B, and the adapter entries removed: the base model that computes the same
    function. Each merged weight keeps its base weight's dtype."""
    out = {name: value for name, value in layer.items() if not is_adapter(name)}
    for target in cfg.lora_projections:
        a_name, b_name = adapter_names(target)
        if a_name in layer:
            w = out[target]
            delta = delta_weight(target, layer[a_name], layer[b_name], cfg.lora_scale)
            out[target] = (jnp.asarray(w, delta.dtype) + delta).astype(w.dtype)
    return out


def _name(path: tuple[Any, ...]) -> str:
    """The parameter's own name at the end of a pytree path into an nnx State or a nested dict."""
    keys = [k for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    last = keys[-1] if keys else ""
    return str(getattr(last, "key", getattr(last, "name", last)))


def has_adapters(params: Any) -> bool:
    """Whether a parameter tree (nnx State, nested dict or abstract) holds LoRA adapters."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return any(is_adapter(_name(path)) for path, _ in paths)


def _adapter_filter(path: tuple[Any, ...], _: Any) -> bool:
    return bool(path) and is_adapter(str(path[-1]))


def partition(params: nnx.State) -> tuple[nnx.State, nnx.State | None]:
    """(adapters, frozen base) of an nnx parameter State; (params, None) when it has no adapters, so the
    LoRA-off path is the very tree it was. `combine` is the inverse."""
    if not has_adapters(params):
        return params, None
    adapters, base = nnx.split_state(params, _adapter_filter, ...)
    return adapters, base


def combine(trainable: nnx.State, frozen: nnx.State | None) -> nnx.State:
    """The full parameter State from `partition`'s two parts."""
    return trainable if frozen is None else nnx.merge_state(trainable, frozen)


def with_adapters(
    model: Any, rank: int, alpha: float = 16.0, targets: tuple[str, ...] | None = None, seed: int = 0
) -> Any:
    """A Decoder with fresh adapters (A random, B zero) around `model`'s weights, which it shares.

    `model` is a Decoder without adapters (e.g. `load_model`'s); the base arrays are reused, not copied,
    so a 7B base is not held twice. rank 0 returns the model unchanged.
    """
    from rlvr_jax.models.decoder import abstract_model

    if not rank:
        return model
    options = {"lora_rank": rank, "lora_alpha": alpha} | ({"lora_targets": tuple(targets)} if targets else {})
    cfg = model.cfg.replace(**options)
    graphdef, state = nnx.split(abstract_model(cfg))
    values = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    layers = dict(values["layers"])
    rng = np.random.default_rng(seed)  # on the host: the same draw in every process, no per-shape compile
    for target in cfg.lora_projections:
        a_name, b_name = adapter_names(target)
        a, b = state["layers"][a_name], state["layers"][b_name]
        bound = 1.0 / math.sqrt(int(np.prod(a.shape[1:-1])))  # as `init_a`
        layers[a_name] = jnp.asarray(rng.uniform(-bound, bound, a.shape), cfg.weight_dtype)
        layers[b_name] = jnp.zeros(b.shape, cfg.weight_dtype)
    nnx.replace_by_pure_dict(state, values | {"layers": layers})
    return nnx.merge(graphdef, state)


def merged_model(model: Any) -> Any:
    """The base Decoder whose weights have the adapters folded in (the model itself without adapters):
    what a merged export writes, and what serves without any LoRA code."""
    from rlvr_jax.models.decoder import abstract_model

    cfg = model.cfg
    if not cfg.lora_rank:
        return model
    values = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    values["layers"] = merge_layer(cfg, values["layers"])
    graphdef, state = nnx.split(abstract_model(cfg.without_lora()))
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)
