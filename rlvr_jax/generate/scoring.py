"""Log-probs of given tokens (a prompt) under the model, with each position's most probable alternatives.

What the inference server's `echo` + `logprobs` reports for prompt tokens: one forward pass at T = 1 over
the whole sequence, the vocabulary-wide log-softmax computed in sequence chunks (`lax.map`) so that the
[rows, L, vocab] float32 logits never exist at once. The chosen token's log-prob and the alternatives
come from the same logits, so a token that is the model's first choice has exactly its best alternative's
log-prob (lm-evaluation-harness's `is_greedy` compares them for equality).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.models.decoder import apply, logits_from_hidden

Array = jax.Array


def sequence_logprobs(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: Array,
    mask: Array,
    *,
    top_logprobs: int = 0,
    chunk: int = 64,
    max_block_elements: int = 1 << 27,
) -> tuple[Array, Array | None, Array | None]:
    """Every token's log-prob given the tokens before it, at T = 1, and optionally the k best alternatives.

    tokens / mask: [rows, L], left padded. Returns lp [rows, L] with lp[:, t] = log p(tokens[:, t] |
    tokens[:, :t]) (0 at t = 0, which has no context; a row's first real token's entry is meaningless, as
    it has none either), and with top_logprobs = k > 0 the ids and log-probs [rows, L, k] of each
    position's k most probable tokens, best first (None otherwise). Pure; jit it with top_logprobs static.
    chunk: positions per vocabulary-wide block (memory about rows * chunk * vocab * 4 bytes), fewer when
    rows * chunk * vocab would pass `max_block_elements` (512 MB of float32 logits per block by default):
    256 rows over a 152k vocabulary take 3 positions a block; without the bound one block of 63 positions
    needed 55 GB on an H200 (the logits, their log-softmax and top-k's sort).
    """
    model = nnx.merge(graphdef, params)
    cfg, arrays = model.cfg, model.arrays()
    rows, L = tokens.shape
    k = top_logprobs
    if L < 2:  # nothing has a context
        none = jnp.zeros((rows, L, k), jnp.float32) if k else None
        return jnp.zeros((rows, L), jnp.float32), (None if none is None else none.astype(jnp.int32)), none
    hidden, _ = apply(cfg, arrays, tokens, mask=mask, return_hidden=True)
    n = L - 1
    c = max(1, min(chunk, n, max_block_elements // (rows * cfg.vocab_size)))
    blocks = -(-n // c)
    pad = blocks * c - n
    h = jnp.pad(hidden[:, :-1], ((0, 0), (0, pad), (0, 0)))  # position t predicts token t + 1
    y = jnp.pad(tokens[:, 1:], ((0, 0), (0, pad)))
    hs = h.reshape(rows, blocks, c, -1).swapaxes(0, 1)  # [blocks, rows, c, D]
    ys = y.reshape(rows, blocks, c).swapaxes(0, 1)

    def one(xs: tuple[Array, Array]) -> tuple[Array, Array, Array]:
        hb, yb = xs
        logits = logits_from_hidden(cfg, arrays, hb).astype(jnp.float32)  # [rows, c, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, yb[..., None], axis=-1)[..., 0]
        if k:
            values, ids = jax.lax.top_k(logits, k)
            return picked - lse, ids.astype(jnp.int32), values - lse[..., None]
        return picked - lse, jnp.zeros((rows, c, 0), jnp.int32), jnp.zeros((rows, c, 0), jnp.float32)

    lp, top_ids, top_lps = jax.lax.map(one, (hs, ys))

    def unchunk(x: Array) -> Array:  # [blocks, rows, c, ...] -> [rows, L] (+ ...), 0 at position 0
        x = x.swapaxes(0, 1).reshape(rows, blocks * c, *x.shape[3:])[:, :n]
        return jnp.pad(x, ((0, 0), (1, 0)) + ((0, 0),) * (x.ndim - 2))

    if not k:
        return unchunk(lp), None, None
    return unchunk(lp), unchunk(top_ids), unchunk(top_lps)
