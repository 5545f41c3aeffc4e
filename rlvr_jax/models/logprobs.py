"""Per-token log-probs of a decoder's tokens, with the vocabulary-wide softmax computed in chunks.

The [rows, N, vocab] float32 logits never exist at once: the log-softmax runs in sequence chunks under
`lax.map`, each chunk rematerialised (`jax.checkpoint`), neither in the forward nor as residuals saved for
the backward pass (a scan saves each iteration's residuals, so without the checkpoint the chunks would
all be kept and the full logits would exist again). Log-probs are never computed for prompt positions:
long prompts would pay the vocabulary-wide softmax for nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.models.decoder import apply, logits_from_hidden

Array = jax.Array


def token_entropy(logits: Array) -> Array:
    """Entropy of each next-token distribution, [..., V] -> [...], in float32.

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v with p = softmax(z): no log of a probability that
    underflowed to 0, and -inf logits (masked vocabulary entries) contribute exactly 0.
    """
    z = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(z, axis=-1)
    p = jax.nn.softmax(z, axis=-1)
    # p * z is 0 * -inf = NaN where p == 0; zeroing z there (not the product) keeps the gradient finite too.
    return lse - jnp.sum(p * jnp.where(p > 0, z, 0.0), axis=-1)


def token_logprobs(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: Array,
    attn_mask: Array,
    temperature: float | Array = 1.0,
    *,
    completion_len: int | None = None,
    chunk: int = 128,
    with_entropy: bool = False,
    remat: str | None = None,
) -> tuple[Array, Array | None]:
    """Log-probs of the last `completion_len` tokens under softmax(logits / T), and optionally the entropy.

    tokens / attn_mask: [rows, L], left padded. Returns lp [rows, n] with lp[:, j] = log p(tokens[:, L-n+j]
    | tokens before it) (n = completion_len, default L - 1: every token that has a predecessor), and the
    entropy of the same next-token distributions [rows, n] (None unless with_entropy).

    temperature: the sampler's; T <= 0 (greedy) means T = 1, as the sampler reports greedy log-probs.
    chunk: sequence positions per vocabulary-wide block; memory is about rows * chunk * vocab * 4 bytes
      (times a few temporaries) instead of rows * n * vocab * 4.
    remat: override the model's `remat` policy ("none", "full", "dots") for this forward.
    """
    model = nnx.merge(graphdef, params)
    cfg = model.cfg if remat is None else model.cfg.replace(remat=remat)
    arrays = model.arrays()
    rows, L = tokens.shape
    n = L - 1 if completion_len is None else completion_len
    if not 0 < n < L:
        raise ValueError(f"completion_len must be in 1..{L - 1} for {L} tokens, got {n}")
    hidden, _ = apply(cfg, arrays, tokens, mask=attn_mask, return_hidden=True)
    hidden = hidden[:, L - n - 1 : L - 1]  # position t predicts token t + 1
    targets = tokens[:, L - n :]

    c = min(chunk, n)
    k = -(-n // c)
    pad = k * c - n
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(rows, k, c, -1).swapaxes(0, 1)  # [k, rows, c, D]
    ys = targets.reshape(rows, k, c).swapaxes(0, 1)
    if isinstance(temperature, int | float):
        t = jnp.float32(temperature if temperature > 0 else 1.0)
    else:
        t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)

    @jax.checkpoint  # keep only the chunk's hidden states for the backward pass, recompute its logits
    def one(xs: tuple[Array, Array]) -> tuple[Array, Array]:
        h, y = xs
        logits = logits_from_hidden(cfg, arrays, h).astype(jnp.float32) / t  # [rows, c, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        # A select and a sum instead of a gather: partitions cleanly when the vocabulary is sharded.
        vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
        picked = jnp.sum(jnp.where(vocab == y[..., None], logits, 0.0), axis=-1)
        ent = token_entropy(logits) if with_entropy else jnp.zeros_like(lse)
        return picked - lse, ent

    lp, ent = jax.lax.map(one, (hs, ys))
    lp = lp.swapaxes(0, 1).reshape(rows, k * c)[:, :n]
    ent = ent.swapaxes(0, 1).reshape(rows, k * c)[:, :n]
    return lp, (ent if with_entropy else None)
