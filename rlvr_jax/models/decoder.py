"""One decoder-only transformer for GPT-2, the Llama family, Qwen2/Qwen3 and Gemma 2/3.

Design choices, and why:
- The NNX module is a container of parameters with logical axis names; the computation is pure functions
  of arrays. `nnx.split` gives (graphdef, state) for jit, grad and sharding; `nnx.merge` gives the module
  back. The sampler and the trainer use the same parameter pytree.
- Layer parameters are stacked (leading `layers` axis). A full-sequence forward (training, scoring, and
  the sampler's prefill through `prefill_cache`) runs them under `lax.scan`, so its compile time does not
  grow with depth. Decoding through a KV cache unrolls the layers instead, with one cache buffer per
  layer: every buffer is then updated in place by the decode loop and read once per step, which a scanned
  stacked cache does not guarantee (measured on an H100: 4.6 ms per step scanned, see benchmarks/results).
  The prefill was unrolled too until 2026-12-07; scanned, a prompt bucket's sampler compiles in 7.5 s
  instead of 18.0 s at qwen2.5-0.5b on an H100 (`benchmarks/compile_time.py`).
- The KV cache is a preallocated pytree passed in and returned, laid out [batch, kv_heads, slots, head_dim]
  so that attention reads each head's keys contiguously. Sequences are left padded so that every row
  writes the same cache slot, and a per-slot validity mask handles the padding. A serving engine whose
  rows start and stop at different times (continuous batching, `rlvr_jax.generate.slots`) gives the cache
  one write index per row instead (`KVCache.index` of shape [batch]): each row then writes its own slot
  and its queries sit at their own slots; training and the sampler keep the shared scalar. Both paths
  share one attention function, which picks its kernel (`ModelConfig.attention`): cuDNN flash attention
  through `jax.nn.dot_product_attention` for full sequences on GPU, a Pallas flash-decoding kernel for
  one-token decode steps on GPU (it reads only the filled slots of the cache), and plain XLA einsums
  elsewhere.
- LoRA (`ModelConfig.lora_rank`, `rlvr_jax.models.lora`): adapters are more stacked parameters of
  `Layers`; `_block` adds each one's low-rank product to its projection, the sampler's fused weights
  have them merged in.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.models import lora
from rlvr_jax.models.config import ModelConfig, rope_frequencies

Array = jax.Array
_CUDNN_TILE = 128  # cuDNN flash attention's key tile: full-sequence attention is padded to whole tiles
_NEG = -1e30  # finite mask value: a fully masked (padding) row gives a uniform softmax, not NaN.


def _wide(dtype: Any) -> Any:
    """Precision for norms, softmax, rotary angles and logits: float32 (float64 when computing in it)."""
    return jnp.promote_types(dtype, jnp.float32)


class KVCache(NamedTuple):
    """Preallocated keys/values, one buffer per layer.

    k, v: tuples (one per layer) of [batch, kv_heads, max_len, head_dim] arrays in the compute dtype.
    valid: [batch, max_len] bool, True where a slot holds a real (non-padding) token.
    index: int32 scalar, the next slot to write (shared by all rows thanks to left padding); or [batch]
      int32, each row's own next slot (rows that joined a running batch at different times).
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    valid: Array
    index: Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        dtype = dtype or cfg.compute_dtype
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
            valid=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times (row i -> rows i*n .. i*n+n-1): group members share a prefill."""
        rep = lambda x: jnp.repeat(x, n, axis=0)
        return KVCache(tuple(map(rep, self.k)), tuple(map(rep, self.v)), rep(self.valid), self.index)


def _param(
    rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any, init: str = "normal"
) -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=axes)


class Layers(nnx.Module):
    """All transformer blocks' parameters, stacked on a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, D, H, K, Dh, F = (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        )
        dt = cfg.weight_dtype

        def p(shape: tuple[int, ...], axes: tuple[str, ...], init: str = "normal") -> nnx.Param:
            return _param(rngs, (L, *shape), ("layers", *axes), dt, init)

        norm_init = "zeros" if cfg.norm_offset else "ones"  # Gemma's (1 + w): zero is the identity
        self.attn_norm = p((D,), ("norm",), norm_init)
        self.mlp_norm = p((D,), ("norm",), norm_init)
        if cfg.sandwich_norms:
            self.attn_post_norm = p((D,), ("norm",), norm_init)
            self.mlp_post_norm = p((D,), ("norm",), norm_init)
        if cfg.norm_type == "layer":
            self.attn_norm_bias = p((D,), ("norm",), "zeros")
            self.mlp_norm_bias = p((D,), ("norm",), "zeros")
        self.q = p((D, H, Dh), ("embed", "q_heads", "head_dim"))
        self.k = p((D, K, Dh), ("embed", "kv_heads", "head_dim"))
        self.v = p((D, K, Dh), ("embed", "kv_heads", "head_dim"))
        self.o = p((H, Dh, D), ("q_heads", "head_dim", "embed"))
        if cfg.qkv_bias:
            self.q_bias = p((H, Dh), ("q_heads", "head_dim"), "zeros")
            self.k_bias = p((K, Dh), ("kv_heads", "head_dim"), "zeros")
            self.v_bias = p((K, Dh), ("kv_heads", "head_dim"), "zeros")
        if cfg.out_bias:
            self.o_bias = p((D,), ("embed",), "zeros")
        if cfg.qk_norm:
            self.q_norm = p((Dh,), ("head_dim",), norm_init)
            self.k_norm = p((Dh,), ("head_dim",), norm_init)
        if cfg.mlp_type == "gated":
            self.gate = p((D, F), ("embed", "mlp"))
        self.up = p((D, F), ("embed", "mlp"))
        self.down = p((F, D), ("mlp", "embed"))
        if cfg.mlp_bias:
            if cfg.mlp_type == "gated":
                self.gate_bias = p((F,), ("mlp",), "zeros")
            self.up_bias = p((F,), ("mlp",), "zeros")
            self.down_bias = p((D,), ("embed",), "zeros")

    def add_adapters(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
        """LoRA adapters next to each targeted weight (`rlvr_jax.models.lora`): A drawn, B zero.

        Called by `Decoder` after every base weight is drawn, so a seed gives the same base weights with
        LoRA on or off.
        """
        dt = cfg.weight_dtype
        for target in cfg.lora_projections:
            base = getattr(self, target)
            (a_shape, a_axes), (b_shape, b_axes) = lora.adapter_layout(
                target, base.shape, base.get_metadata()["axes"], cfg.lora_rank
            )
            a_name, b_name = lora.adapter_names(target)
            fan_in = math.prod(a_shape[1:-1])
            setattr(self, a_name, nnx.Param(lora.init_a(rngs.params(), a_shape, fan_in, dt), axes=a_axes))
            setattr(self, b_name, nnx.Param(jnp.zeros(b_shape, dt), axes=b_axes))

    def arrays(self) -> dict[str, Array]:
        """The stacked parameters as a plain dict, the form `lax.scan` slices per layer."""
        return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


class Decoder(nnx.Module):
    """A causal language model. `__call__` maps token ids to logits, optionally through a KV cache."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.weight_dtype
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt)
        if cfg.positional == "learned":
            self.pos_embed = _param(
                rngs, (cfg.max_position_embeddings, cfg.hidden_size), ("positions", "embed"), dt
            )
        self.layers = Layers(cfg, rngs)
        self.final_norm = _param(
            rngs, (cfg.hidden_size,), ("norm",), dt, "zeros" if cfg.norm_offset else "ones"
        )
        if cfg.norm_type == "layer":
            self.final_norm_bias = _param(rngs, (cfg.hidden_size,), ("norm",), dt, "zeros")
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt)
        self.layers.add_adapters(cfg, rngs)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        mask: Array | None = None,
        cache: KVCache | None = None,
        *,
        return_hidden: bool = False,
    ) -> tuple[Array, KVCache | None]:
        """Runs the model.

        Args:
          tokens: [batch, T] int token ids (left padded when rows differ in length).
          positions: [batch, T] position ids; default derived from `mask` (0 at each row's first token).
          mask: [batch, T] bool/int, 1 for real tokens; default all ones.
          cache: a KVCache to write this chunk into at `cache.index` and attend over; None for a plain
            full-sequence forward (training, scoring).
          return_hidden: return final hidden states [batch, T, D] instead of logits (for chunked losses).

        Returns:
          (logits [batch, T, vocab] in float32, or hidden states, and the updated cache or None).
        """
        return apply(self.cfg, self.arrays(), tokens, positions, mask, cache, return_hidden=return_hidden)

    def arrays(self) -> dict[str, Any]:
        """All parameters as a nested dict of arrays, the form the pure functions below take."""
        top = {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}
        top["layers"] = self.layers.arrays()
        return top

    def logits(self, hidden: Array) -> Array:
        return logits_from_hidden(self.cfg, self.arrays(), hidden)


def apply(
    cfg: ModelConfig,
    params: dict[str, Any],
    tokens: Array,
    positions: Array | None = None,
    mask: Array | None = None,
    cache: KVCache | None = None,
    *,
    return_hidden: bool = False,
) -> tuple[Array, KVCache | None]:
    """`Decoder.__call__` as a pure function of the parameter dict (see there for the arguments).

    `params["layers"]` is either the stacked dict or a list of per-layer dicts (`unstack_layers`); the
    sampler unstacks once, outside its decode loop, so that no step slices the stacked weights.
    """
    if mask is None:
        mask = jnp.ones(tokens.shape, bool)
    mask = mask.astype(bool)
    if positions is None:
        positions = positions_from_mask(mask)
        if cache is not None:
            # Continue counting from what the cache already holds for each row.
            positions = positions + jnp.sum(cache.valid, axis=1, dtype=jnp.int32)[:, None]
    hidden, new_cache = forward_hidden(cfg, params, tokens, positions, mask, cache)
    if return_hidden:
        return hidden, new_cache
    return logits_from_hidden(cfg, params, hidden), new_cache


def prefill_cache(
    cfg: ModelConfig, params: dict[str, Any], tokens: Array, mask: Array, max_len: int, dtype: Any = None
) -> tuple[Array, KVCache]:
    """Runs left-padded prompts [B, T] through the model and returns (hidden [B, T, D], a `KVCache` of
    `max_len` slots holding their keys and values in slots 0..T-1, next slot T).

    What `apply` with a fresh `KVCache.init` computes, but through the scanned layers of the cache-less
    pass: XLA compiles one layer instead of one per layer (the sampler's prefill, compiled once per prompt
    bucket before training starts), and attention covers the prompt's T slots rather than all max_len.
    The per-layer cache buffers the decode loop updates in place are built from the scan's stacked output.
    """
    mask = mask.astype(bool)
    hidden, (keys, values) = forward_hidden(
        cfg, params, tokens, positions_from_mask(mask), mask, None, return_kv=True
    )
    B, T = tokens.shape
    dtype = dtype or cfg.compute_dtype
    empty = jnp.zeros((B, cfg.num_kv_heads, max_len, cfg.head_dim), dtype)
    fill = lambda x: jax.lax.dynamic_update_slice(empty, x.astype(dtype), (0, 0, 0, 0))
    cache = KVCache(
        k=tuple(fill(keys[i]) for i in range(cfg.num_layers)),
        v=tuple(fill(values[i]) for i in range(cfg.num_layers)),
        valid=jax.lax.dynamic_update_slice(jnp.zeros((B, max_len), bool), mask, (0, 0)),
        index=jnp.asarray(T, jnp.int32),
    )
    return hidden, cache


def logits_from_hidden(cfg: ModelConfig, params: dict[str, Any], hidden: Array) -> Array:
    """Projects hidden states to float32 logits (tied or separate output head).

    The product accumulates in float32 and returns float32 logits (a log-softmax over a 150k vocabulary
    needs them); its backward pass multiplies in the compute dtype (`_head_bwd`). Gemma 2 soft-caps them
    (`cfg.logit_softcap`), in float32.
    """
    tied = bool(cfg.tie_word_embeddings)
    w = (params["embed"] if tied else params["lm_head"]).astype(cfg.compute_dtype)
    logits = _head(hidden.astype(cfg.compute_dtype), w, tied)
    return _softcap(logits, cfg.logit_softcap)


def _softcap(x: Array, cap: float | None) -> Array:
    """cap * tanh(x / cap): bounded in (-cap, cap), nearly the identity well inside it (Gemma 2)."""
    return x if not cap else jnp.tanh(x / cap) * cap


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _head(hidden: Array, w: Array, tied: bool) -> Array:
    """hidden [..., D] @ w ([V, D] when tied to the embedding, else [D, V]) -> [..., V] in the wide dtype."""
    spec = "...d,vd->...v" if tied else "...d,dv->...v"
    return jnp.einsum(spec, hidden, w, preferred_element_type=_wide(hidden.dtype))


def _head_fwd(hidden: Array, w: Array, tied: bool) -> tuple[Array, tuple[Array, Array]]:
    return _head(hidden, w, tied), (hidden, w)


def _head_bwd(tied: bool, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    """Both backward products in the compute dtype, accumulating in float32.

    Left to autodiff, the float32 logits cotangent would promote both products to float32 (TF32 on
    GPU, half the bf16 rate): on one H100 they took 13% of a Qwen2.5-0.5B train step
    (benchmarks/results/train_step_profile_h100.json). Rounding the cotangent to bf16 is the usual
    mixed-precision treatment of every other matmul in the model.
    """
    hidden, w = res
    wide = _wide(hidden.dtype)
    g = g.astype(hidden.dtype)
    h2, g2 = hidden.reshape(-1, hidden.shape[-1]), g.reshape(-1, g.shape[-1])
    if tied:  # w [V, D]
        dh = jnp.einsum("nv,vd->nd", g2, w, preferred_element_type=wide)
        dw = jnp.einsum("nd,nv->vd", h2, g2, preferred_element_type=wide)
    else:  # w [D, V]
        dh = jnp.einsum("nv,dv->nd", g2, w, preferred_element_type=wide)
        dw = jnp.einsum("nd,nv->dv", h2, g2, preferred_element_type=wide)
    return dh.reshape(hidden.shape).astype(hidden.dtype), dw.astype(w.dtype)


_head.defvjp(_head_fwd, _head_bwd)


def fuse_projections(cfg: ModelConfig, layer: dict[str, Array]) -> dict[str, Array]:
    """One layer's q/k/v kernels concatenated into one `qkv`, and gate/up into one `gate_up`.

    Decoding multiplies a few hundred rows by each kernel: one larger matmul instead of three (or two) cuts
    kernel launches and lets each read more weight bytes per launch. Done once per sampler call, outside
    the decode loop; `_block` uses whichever form it is given.

    LoRA adapters are merged into their base weights here (`lora.merge_layer`): this already builds a new
    copy of q/k/v and gate/up once per generate call, from parameters the sampler is handed fresh after
    every train step (`optim.state.sampler_params`), so folding in W + s * A @ B costs one small matmul per
    weight per call, and every decode step then reads exactly the base model's bytes instead of adding two
    rank-r products per projection per token. Training never merges (`lora.add_delta`).
    """
    out = lora.merge_layer(cfg, dict(layer))
    out["qkv"] = jnp.concatenate([out.pop("q"), out.pop("k"), out.pop("v")], axis=1)
    if cfg.qkv_bias:
        out["qkv_bias"] = jnp.concatenate([out.pop("q_bias"), out.pop("k_bias"), out.pop("v_bias")], axis=0)
    if cfg.mlp_type == "gated":
        out["gate_up"] = jnp.concatenate([out.pop("gate"), out.pop("up")], axis=1)
        if cfg.mlp_bias:
            out["gate_up_bias"] = jnp.concatenate([out.pop("gate_bias"), out.pop("up_bias")], axis=0)
    return out


def unstack_layers(layers: dict[str, Array] | list[dict[str, Array]], n: int) -> list[dict[str, Array]]:
    """Stacked layer parameters -> a list of per-layer dicts (a no-op on a list)."""
    if isinstance(layers, list):
        return layers
    return [{name: value[i] for name, value in layers.items()} for i in range(n)]


def positions_from_mask(mask: Array) -> Array:
    """Position ids for left-padded rows: 0 at each row's first real token, clipped at 0 on padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def forward_hidden(
    cfg: ModelConfig,
    params: dict[str, Any],
    tokens: Array,
    positions: Array,
    mask: Array,
    cache: KVCache | None,
    *,
    return_kv: bool = False,
) -> tuple[Array, Any]:
    """The pure forward pass: embeddings, scanned blocks, final norm.

    Returns (hidden, the updated cache) with a cache; without one, (hidden, None), or with `return_kv`
    (hidden, (keys, values)): each [layers, batch, kv_heads, T, head_dim], what `prefill_cache` puts in
    a new cache."""
    dt = cfg.compute_dtype
    x = jnp.take(params["embed"], tokens, axis=0).astype(dt)
    if cfg.embed_scale != 1.0:  # Gemma: the scale is rounded to the compute dtype first, as in transformers
        x = x * jnp.asarray(cfg.embed_scale, dt)
    if cfg.positional == "learned":
        x = x + jnp.take(params["pos_embed"], positions, axis=0).astype(dt)
        rope = None
    else:
        rope = _rope_tables(cfg, positions, _wide(dt))
        if cfg.rope_local_theta:  # (full layers' table, sliding layers' table), picked per layer
            rope = (rope, _rope_tables(cfg, positions, _wide(dt), local=True))

    T = tokens.shape[1]
    if cache is None:
        # Attend over this chunk only: slots are 0..T-1 and validity is the input mask.
        start = jnp.zeros((), jnp.int32)
        q_slots = jnp.arange(T, dtype=jnp.int32)

        def block(x, xs):
            p, window = xs
            x, k, v = _block(cfg, p, x, rope, q_slots, mask, window, start, None, None)
            return x, ((k, v) if return_kv else None)

        if cfg.remat == "full":
            block = jax.checkpoint(block)
        elif cfg.remat == "dots":
            block = jax.checkpoint(block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        layers = params["layers"]
        if isinstance(layers, list):
            layers = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
        x, new_cache = jax.lax.scan(block, x, (layers, jnp.asarray(cfg.window_array())))
    else:
        start = cache.index
        if start.ndim:  # a write index per row: [B, T] query slots
            write = lambda v, m, s: jax.lax.dynamic_update_slice(v, m, (s,))
            k_valid = jax.vmap(write)(cache.valid, mask, start)
            q_slots = start[:, None] + jnp.arange(T, dtype=jnp.int32)
        else:
            k_valid = jax.lax.dynamic_update_slice(cache.valid, mask, (0, start))
            q_slots = start + jnp.arange(T, dtype=jnp.int32)
        ks, vs = [], []
        layers = unstack_layers(params["layers"], cfg.num_layers)
        for i, (p, window) in enumerate(zip(layers, cfg.window_array().tolist(), strict=True)):
            x, k, v = _block(cfg, p, x, rope, q_slots, k_valid, window, start, cache.k[i], cache.v[i])
            ks.append(k)
            vs.append(v)
        new_cache = KVCache(k=tuple(ks), v=tuple(vs), valid=k_valid, index=start + T)
    x = _norm(cfg, x, params["final_norm"], params.get("final_norm_bias"))
    return x, new_cache


def _layer_rope(rope: Any, window: Array | int) -> tuple[Array, Array] | None:
    """This layer's rotary table: the sliding layers' own (window > 0) where the model has two."""
    if rope is None or not isinstance(rope[0], tuple):
        return rope
    (full, local) = rope
    if isinstance(window, int):
        return local if window else full
    return jax.tree.map(lambda f, s: jnp.where(window > 0, s, f), full, local)


def _block(cfg, p, x, rope, q_slots, k_valid, window, start, k_cache, v_cache):
    dt = cfg.compute_dtype
    rope = _layer_rope(rope, window)
    h = _norm(cfg, x, p["attn_norm"], p.get("attn_norm_bias"))
    if "qkv" in p:  # fused kernels (fuse_projections)
        qkv = jnp.einsum("btd,dhk->bthk", h, p["qkv"].astype(dt))
        if cfg.qkv_bias:
            qkv = qkv + p["qkv_bias"].astype(dt)
        H, K = cfg.num_heads, cfg.num_kv_heads
        q, k, v = qkv[:, :, :H], qkv[:, :, H : H + K], qkv[:, :, H + K :]
    else:
        q = lora.add_delta(cfg, p, "q", h, jnp.einsum("btd,dhk->bthk", h, p["q"].astype(dt)))
        k = lora.add_delta(cfg, p, "k", h, jnp.einsum("btd,dhk->bthk", h, p["k"].astype(dt)))
        v = lora.add_delta(cfg, p, "v", h, jnp.einsum("btd,dhk->bthk", h, p["v"].astype(dt)))
        if cfg.qkv_bias:
            q, k, v = q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt), v + p["v_bias"].astype(dt)
    if cfg.qk_norm:
        q = _rms(q, p["q_norm"], cfg.norm_eps, cfg.norm_offset)
        k = _rms(k, p["k_norm"], cfg.norm_eps, cfg.norm_offset)
    if rope is not None:
        q, k = _apply_rope(q, rope), _apply_rope(k, rope)

    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, Dh], the cache layout
    if k_cache is None:
        keys, values = k, v
        k_cache, v_cache = k, v  # what a new cache would hold (`prefill_cache`); unused otherwise
    else:
        # Write this chunk into its cache slots, then attend over the whole cache.
        k_cache, v_cache = _write_cache(k_cache, k, start), _write_cache(v_cache, v, start)
        keys, values = k_cache.astype(dt), v_cache.astype(dt)

    attn = attention(q, keys, values, q_slots, k_valid, window, impl=cfg.attention, scale=cfg.attn_scale,
                     softcap=cfg.attn_softcap)  # fmt: skip
    out = lora.add_delta(cfg, p, "o", attn, jnp.einsum("bthk,hkd->btd", attn, p["o"].astype(dt)))
    if cfg.out_bias:
        out = out + p["o_bias"].astype(dt)
    if cfg.sandwich_norms:
        out = _norm(cfg, out, p["attn_post_norm"], None)
    x = x + out

    h = _norm(cfg, x, p["mlp_norm"], p.get("mlp_norm_bias"))
    if "gate_up" in p:  # fused kernels (fuse_projections)
        gate_up = h @ p["gate_up"].astype(dt)
        if cfg.mlp_bias:
            gate_up = gate_up + p["gate_up_bias"].astype(dt)
        gate, up = jnp.split(gate_up, 2, axis=-1)
        hidden = _activate(cfg.activation, gate) * up
    elif cfg.mlp_type == "gated":
        up = lora.add_delta(cfg, p, "up", h, h @ p["up"].astype(dt))
        gate = lora.add_delta(cfg, p, "gate", h, h @ p["gate"].astype(dt))
        if cfg.mlp_bias:
            up, gate = up + p["up_bias"].astype(dt), gate + p["gate_bias"].astype(dt)
        hidden = _activate(cfg.activation, gate) * up
    else:
        up = lora.add_delta(cfg, p, "up", h, h @ p["up"].astype(dt))
        if cfg.mlp_bias:
            up = up + p["up_bias"].astype(dt)
        hidden = _activate(cfg.activation, up)
    down = lora.add_delta(cfg, p, "down", hidden, hidden @ p["down"].astype(dt))
    if cfg.mlp_bias:
        down = down + p["down_bias"].astype(dt)
    if cfg.sandwich_norms:
        down = _norm(cfg, down, p["mlp_post_norm"], None)
    return x + down, k_cache, v_cache


def _write_cache(buffer: Array, new: Array, start: Array) -> Array:
    """new [B, K, T, Dh] into buffer [B, K, S, Dh] at slot `start` (a scalar, or one slot per row)."""
    new = new.astype(buffer.dtype)
    if not start.ndim:
        return jax.lax.dynamic_update_slice(buffer, new, (0, 0, start, 0))
    write = lambda b, n, s: jax.lax.dynamic_update_slice(b, n, (0, s, 0))
    return jax.vmap(write)(buffer, new, start)


def attention(
    q: Array,
    k: Array,
    v: Array,
    q_slots: Array,
    k_valid: Array,
    window: Array | int,
    *,
    impl: str = "xla",
    scale: float | None = None,
    softcap: float | None = None,
) -> Array:
    """Causal grouped-query attention over cache slots.

    q: [B, T, H, Dh]; k, v: [B, K, S, Dh]; q_slots: [T] slot of each query ([B, T] when rows write at
    their own slots, see `KVCache.index`); k_valid: [B, S].
    A query at slot i sees key slot j when j <= i, slot j is valid, and (window == 0 or i - j < window).
    Scores are q.k times `scale` (default head_dim ** -0.5), soft-capped when `softcap` is set (Gemma 2:
    cap * tanh(score / cap), before the mask); the fused kernels have no soft-cap, so then it is "xla".

    impl "xla" is the reference einsum implementation. "auto" routes to faster kernels where they apply
    and are numerically equivalent (tests compare them with the reference):
    - one-token decode steps on GPU: the Pallas flash-decoding kernel (`_decode_attention_pallas`), which
      skips cache blocks beyond the current slot instead of reading the whole preallocated cache;
    - full sequences (prefill, training) in a 16/32-bit dtype: `jax.nn.dot_product_attention`, cuDNN
      flash attention on GPU in bf16/fp16 and JAX's XLA implementation otherwise.
    """
    if impl == "auto" and not softcap:
        on_gpu = jax.default_backend() == "gpu"
        if q.shape[1] == 1 and on_gpu and _pallas_decode_supported(q, k, window):
            return _decode_attention_pallas(q, k, v, q_slots, k_valid, window, scale=scale)
        if q.shape[1] > 1 and q.dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
            cudnn = on_gpu and q.dtype != jnp.float32 and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128
            return _dot_product_attention(q, k, v, q_slots, k_valid, window, cudnn=cudnn, scale=scale)
    B, T, H, Dh = q.shape
    K = k.shape[1]
    qg = q.reshape(B, T, K, H // K, Dh)
    scores = jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=_wide(q.dtype))
    scores = _softcap(scores * (Dh**-0.5 if scale is None else scale), softcap)
    allowed = _allowed(q_slots, k_valid, window)
    scores = jnp.where(allowed[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v)
    return out.reshape(B, T, H, Dh)


def _allowed(q_slots: Array, k_valid: Array, window: Array | int, own_slot: bool = True) -> Array:
    """[B, T, S] bool: which key slots each query may attend to (causal, valid, inside the window).

    A query always sees its own slot, even a padding query whose slot holds no valid key. Otherwise a
    left-padding query's row is fully masked, and fused kernels treat such rows badly: cuDNN's flash
    attention keeps a log-sum-exp of about the mask value for them, and its backward pass can overflow
    to inf * 0 = NaN in dQ, which the loss mask does not stop (the NaN reaches the shared projection
    weights through the matmul). Padding outputs are never read, and for a real query its own slot is
    already allowed, so this changes no output a caller uses. On its own this did not stop the NaN of
    a real model's update on an H100 (large scores trigger it too); the whole-tile padding in
    `_dot_product_attention` did (benchmarks/results/nonfinite/). `own_slot=False` gives the mask without
    it (benchmarks/nonfinite_probe.py compares the two).
    """
    k_slots = jnp.arange(k_valid.shape[1], dtype=jnp.int32)
    diff = q_slots[..., :, None] - k_slots  # [T, S], or [B, T, S] for per-row query slots
    allowed = (diff >= 0) & ((window == 0) | (diff < window))
    allowed = (allowed if allowed.ndim == 3 else allowed[None]) & k_valid[:, None, :]
    return allowed | (diff == 0) if own_slot else allowed


def _dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    q_slots: Array,
    k_valid: Array,
    window: Array | int,
    *,
    cudnn: bool,
    scale: float | None = None,
) -> Array:
    """`jax.nn.dot_product_attention` with our mask (left padding, causal, sliding window) as its mask.

    The mask is passed in full rather than as is_causal + sequence lengths because rows are left padded
    (cuDNN's padding masks assume right padding) and queries may start mid-cache (chunked prefill).
    """
    keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, S, K, Dh]
    mask = _allowed(q_slots, k_valid, window)[:, None]  # [B, 1, T, S]
    T, S = q.shape[1], keys.shape[1]
    tile = _CUDNN_TILE if cudnn else 1
    pad_t, pad_s = -T % tile, -S % tile
    if pad_t or pad_s:
        # cuDNN's flash backward gives NaN in dQ when the sequence ends inside a 128-wide tile and a row's
        # scores are large (measured on an H100: lengths 64 and 192 fail, 128 and 256 pass, with the same
        # inputs; the real Qwen2.5 NQ update at 128 + 64 slots skipped every step). Whole tiles of padding,
        # masked, avoid the kernel's own tile padding; the extra query rows see every key and are dropped.
        q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0)))
        keys, values = (jnp.pad(x, ((0, 0), (0, pad_s), (0, 0), (0, 0))) for x in (keys, values))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_t), (0, pad_s)))
        mask = mask.at[:, :, T:, :].set(True)
    out = jax.nn.dot_product_attention(
        q, keys, values, mask=mask, scale=scale, implementation="cudnn" if cudnn else "xla"
    )
    return out[:, :T]


def _decode_split(slots: int) -> int:
    """Cache slots per Pallas program: the largest power of two (<= 128) dividing the cache length."""
    split = 1
    while slots % (split * 2) == 0 and split < 128:
        split *= 2
    return split


def _pallas_decode_supported(q: Array, k: Array, window: Array | int) -> bool:
    """Shapes the Triton flash-decoding kernel compiles for: power-of-two head_dim >= 16, and cache slots
    that split into power-of-two blocks of at least 16 (every sampler bucket is a multiple of 16)."""
    head_dim = q.shape[-1]
    return (
        head_dim >= 16
        and head_dim & (head_dim - 1) == 0
        and _decode_split(k.shape[2]) >= 16
        and isinstance(window, int)
    )


def _decode_attention_pallas(
    q: Array,
    k: Array,
    v: Array,
    q_slots: Array,
    k_valid: Array,
    window: int,
    *,
    interpret: bool = False,
    scale: float | None = None,
) -> Array:
    """One decode step with JAX's Pallas flash-decoding kernel (`pallas.ops.gpu.decode_attention.gqa`).

    The kernel attends over one contiguous slot range [start, end) per row and skips blocks outside it,
    so a step reads the filled part of the cache only. Our rows satisfy that: left padding is followed by
    the prompt and then by every decoded token, so a row's valid slots are one run ending at the current
    slot (the sampler always decodes with mask=1; a slot engine's rows each at their own current slot).
    interpret=True runs the kernel on CPU for tests.
    """
    from jax.experimental.pallas.ops.gpu import decode_attention

    B, Dh = q.shape[0], q.shape[-1]
    S = k.shape[2]
    split = _decode_split(S)
    first = jnp.argmax(k_valid, axis=1).astype(jnp.int32)  # first valid slot (left padding before it)
    current = q_slots[:, 0] if q_slots.ndim == 2 else jnp.full((B,), q_slots[0], jnp.int32)
    if window:
        first = jnp.maximum(first, current - window + 1)
    end = current + 1
    out = decode_attention.gqa(
        q[:, 0],
        k.swapaxes(1, 2),  # the kernel takes [B, S, K, Dh] and swaps back: XLA cancels the pair
        v.swapaxes(1, 2),
        start_idx=first,
        kv_seq_len=end,
        sm_scale=1.0 / math.sqrt(Dh) if scale is None else scale,
        block_k=split,
        k_splits=S // split,
        interpret=interpret,
    )
    return out[:, None].astype(q.dtype)


def _rope_tables(cfg: ModelConfig, positions: Array, dtype: Any, local: bool = False) -> tuple[Array, Array]:
    inv = jnp.asarray(rope_frequencies(cfg, local), dtype)
    angles = positions[..., None].astype(dtype) * inv  # [B, T, Dh/2]
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: Array, rope: tuple[Array, Array]) -> Array:
    """Rotates the two halves of each head (the Hugging Face 'rotate_half' layout)."""
    cos, sin = rope
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x32 = x.astype(cos.dtype)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _rms(x: Array, scale: Array, eps: float, offset: float = 0.0) -> Array:
    """RMSNorm. Llama-style (offset 0) rounds the normalised x to its dtype, then scales; Gemma-style
    (offset 1, scale = 1 + w) scales in float32 and rounds once, as each family's reference does."""
    x32 = x.astype(_wide(x.dtype))
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset:
        return (y * (offset + scale.astype(y.dtype))).astype(x.dtype)
    return (y.astype(x.dtype) * scale.astype(x.dtype)).astype(x.dtype)


# LayerNorm (GPT-2) applies its scale and bias in float32; every other parameter is cast to the compute
# dtype where it is used (matmul weights, biases, embeddings after the lookup, RMSNorm scales).
_LAYER_NORM_PARAMS = frozenset(
    {"attn_norm", "attn_norm_bias", "mlp_norm", "mlp_norm_bias", "final_norm", "final_norm_bias"}
)


_GEMMA_NORM_PARAMS = frozenset(
    {"attn_norm", "mlp_norm", "attn_post_norm", "mlp_post_norm", "q_norm", "k_norm", "final_norm"}
)


def float32_params(cfg: ModelConfig) -> frozenset[str]:
    """Names of the parameters this model reads in float32 rather than in its compute dtype.

    Storing any other parameter in the compute dtype changes no result (the cast at use is the same cast),
    which is what lets the sampler hold a bf16 copy of float32 masters (`optim.state.sampler_params`).
    """
    if cfg.norm_type != "rms":
        return _LAYER_NORM_PARAMS
    if cfg.norm_offset:  # Gemma reads (1 + w) in float32
        return _GEMMA_NORM_PARAMS
    return frozenset()


def _norm(cfg: ModelConfig, x: Array, scale: Array, bias: Array | None) -> Array:
    if cfg.norm_type == "rms":
        return _rms(x, scale, cfg.norm_eps, cfg.norm_offset)
    x32 = x.astype(_wide(x.dtype))
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale.astype(x32.dtype)
    return (y + bias.astype(x32.dtype)).astype(x.dtype)


def _activate(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.gelu(x, approximate=False)


def init_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A randomly initialised model (tests, benchmarks with random weights)."""
    return Decoder(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Decoder:
    """The model's structure with shape-only leaves: what a checkpoint loader fills without allocating."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
