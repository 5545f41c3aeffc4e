"""One decoder-only transformer for GPT-2, the Llama family and Qwen2/Qwen3.

Design choices, and why:
- The NNX module is a container of parameters with logical axis names; the computation is pure functions
  of arrays. `nnx.split` gives (graphdef, state) for jit, grad and sharding; `nnx.merge` gives the module
  back. The sampler and the trainer use the same parameter pytree.
- Layers are stacked (leading `layers` axis) and run under `lax.scan`, so compile time does not grow with
  depth (a 30-layer SmolLM2 compiles as fast as a 2-layer test model).
- The KV cache is a preallocated pytree passed in and returned; sequences are left padded so that every
  row writes the same cache slot, and a per-slot validity mask handles the padding. Full-sequence forward
  (training) and cached prefill / decode (sampling) share one attention function.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.models.config import ModelConfig, rope_frequencies

Array = jax.Array
_NEG = -1e30  # finite mask value: a fully masked (padding) row gives a uniform softmax, not NaN.


def _wide(dtype: Any) -> Any:
    """Precision for norms, softmax, rotary angles and logits: float32 (float64 when computing in it)."""
    return jnp.promote_types(dtype, jnp.float32)


class KVCache(NamedTuple):
    """Preallocated keys/values for all layers.

    k, v: [layers, batch, max_len, kv_heads, head_dim] in the compute dtype.
    valid: [batch, max_len] bool, True where a slot holds a real (non-padding) token.
    index: int32 scalar, the next slot to write (shared by all rows thanks to left padding).
    """

    k: Array
    v: Array
    valid: Array
    index: Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        dtype = dtype or cfg.compute_dtype
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


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

        self.attn_norm = p((D,), ("norm",), "ones")
        self.mlp_norm = p((D,), ("norm",), "ones")
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
            self.q_norm = p((Dh,), ("head_dim",), "ones")
            self.k_norm = p((Dh,), ("head_dim",), "ones")
        if cfg.mlp_type == "gated":
            self.gate = p((D, F), ("embed", "mlp"))
        self.up = p((D, F), ("embed", "mlp"))
        self.down = p((F, D), ("mlp", "embed"))
        if cfg.mlp_bias:
            if cfg.mlp_type == "gated":
                self.gate_bias = p((F,), ("mlp",), "zeros")
            self.up_bias = p((F,), ("mlp",), "zeros")
            self.down_bias = p((D,), ("embed",), "zeros")

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
        self.final_norm = _param(rngs, (cfg.hidden_size,), ("norm",), dt, "ones")
        if cfg.norm_type == "layer":
            self.final_norm_bias = _param(rngs, (cfg.hidden_size,), ("norm",), dt, "zeros")
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt)

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
        cfg = self.cfg
        if mask is None:
            mask = jnp.ones(tokens.shape, bool)
        mask = mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(mask)
            if cache is not None:
                # Continue counting from what the cache already holds for each row.
                positions = positions + jnp.sum(cache.valid, axis=1, dtype=jnp.int32)[:, None]
        h = forward_hidden(cfg, self._arrays(), tokens, positions, mask, cache)
        hidden, new_cache = h
        if return_hidden:
            return hidden, new_cache
        return self.logits(hidden), new_cache

    def _arrays(self) -> dict[str, Any]:
        top = {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}
        top["layers"] = self.layers.arrays()
        return top

    def logits(self, hidden: Array) -> Array:
        """Projects hidden states to float32 logits (tied or separate output head)."""
        cfg = self.cfg
        out = _wide(cfg.compute_dtype)
        if cfg.tie_word_embeddings:
            w = self.embed[...].astype(cfg.compute_dtype)
            return jnp.einsum("btd,vd->btv", hidden, w, preferred_element_type=out)
        w = self.lm_head[...].astype(cfg.compute_dtype)
        return jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=out)


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
) -> tuple[Array, KVCache | None]:
    """The pure forward pass: embeddings, scanned blocks, final norm."""
    dt = cfg.compute_dtype
    x = jnp.take(params["embed"], tokens, axis=0).astype(dt)
    if cfg.positional == "learned":
        x = x + jnp.take(params["pos_embed"], positions, axis=0).astype(dt)
        rope = None
    else:
        rope = _rope_tables(cfg, positions, _wide(dt))

    T = tokens.shape[1]
    if cache is None:
        # Attend over this chunk only: slots are 0..T-1 and validity is the input mask.
        k_valid = mask
        start = jnp.zeros((), jnp.int32)
        k_all = v_all = None
    else:
        start = cache.index
        k_valid = jax.lax.dynamic_update_slice(cache.valid, mask, (0, start))
        k_all, v_all = cache.k, cache.v
    q_slots = start + jnp.arange(T, dtype=jnp.int32)
    windows = jnp.asarray(cfg.window_array())

    def block(carry, xs):
        x, k_all, v_all = carry
        p, layer, window = xs
        x, k_all, v_all = _block(cfg, p, x, rope, q_slots, k_valid, window, layer, start, k_all, v_all)
        return (x, k_all, v_all), None

    layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    (x, k_all, v_all), _ = jax.lax.scan(block, (x, k_all, v_all), (params["layers"], layer_ids, windows))
    x = _norm(cfg, x, params["final_norm"], params.get("final_norm_bias"))
    new_cache = None
    if cache is not None:
        new_cache = KVCache(k=k_all, v=v_all, valid=k_valid, index=start + T)
    return x, new_cache


def _block(cfg, p, x, rope, q_slots, k_valid, window, layer, start, k_all, v_all):
    dt = cfg.compute_dtype
    h = _norm(cfg, x, p["attn_norm"], p.get("attn_norm_bias"))
    q = jnp.einsum("btd,dhk->bthk", h, p["q"].astype(dt))
    k = jnp.einsum("btd,dhk->bthk", h, p["k"].astype(dt))
    v = jnp.einsum("btd,dhk->bthk", h, p["v"].astype(dt))
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt), v + p["v_bias"].astype(dt)
    if cfg.qk_norm:
        q = _rms(q, p["q_norm"], cfg.norm_eps)
        k = _rms(k, p["k_norm"], cfg.norm_eps)
    if rope is not None:
        q, k = _apply_rope(q, rope), _apply_rope(k, rope)

    if k_all is None:
        keys, values = k, v
    else:
        # Write this chunk into the layer's cache slots, then attend over the whole cache.
        idx = (layer, 0, start, 0, 0)
        k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), idx)
        v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), idx)
        keys = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False).astype(dt)
        values = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False).astype(dt)

    attn = attention(q, keys, values, q_slots, k_valid, window)
    out = jnp.einsum("bthk,hkd->btd", attn, p["o"].astype(dt))
    if cfg.out_bias:
        out = out + p["o_bias"].astype(dt)
    x = x + out

    h = _norm(cfg, x, p["mlp_norm"], p.get("mlp_norm_bias"))
    up = h @ p["up"].astype(dt)
    if cfg.mlp_bias:
        up = up + p["up_bias"].astype(dt)
    if cfg.mlp_type == "gated":
        gate = h @ p["gate"].astype(dt)
        if cfg.mlp_bias:
            gate = gate + p["gate_bias"].astype(dt)
        hidden = _activate(cfg.activation, gate) * up
    else:
        hidden = _activate(cfg.activation, up)
    down = hidden @ p["down"].astype(dt)
    if cfg.mlp_bias:
        down = down + p["down_bias"].astype(dt)
    return x + down, k_all, v_all


def attention(q: Array, k: Array, v: Array, q_slots: Array, k_valid: Array, window: Array) -> Array:
    """Causal grouped-query attention over cache slots.

    q: [B, T, H, Dh]; k, v: [B, S, K, Dh]; q_slots: [T] slot of each query; k_valid: [B, S].
    A query at slot i sees key slot j when j <= i, slot j is valid, and (window == 0 or i - j < window).
    """
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    qg = q.reshape(B, T, K, H // K, Dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=_wide(q.dtype))
    scores = scores * (Dh**-0.5)
    k_slots = jnp.arange(S, dtype=jnp.int32)
    diff = q_slots[:, None] - k_slots[None, :]
    allowed = (diff >= 0) & ((window == 0) | (diff < window))
    allowed = allowed[None, :, :] & k_valid[:, None, :]  # [B, T, S]
    scores = jnp.where(allowed[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(B, T, H, Dh)


def _rope_tables(cfg: ModelConfig, positions: Array, dtype: Any) -> tuple[Array, Array]:
    inv = jnp.asarray(rope_frequencies(cfg), dtype)
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


def _rms(x: Array, scale: Array, eps: float) -> Array:
    x32 = x.astype(_wide(x.dtype))
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y.astype(x.dtype) * scale.astype(x.dtype)).astype(x.dtype)


def _norm(cfg: ModelConfig, x: Array, scale: Array, bias: Array | None) -> Array:
    if cfg.norm_type == "rms":
        return _rms(x, scale, cfg.norm_eps)
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
