"""Continuous batching on the device: a fixed set of decode slots over one preallocated KV cache.

The sampler (`sampler.generate`) runs one batch from prefill to its last token: a row that arrives later
waits for the whole batch. Here the batch is a set of S slots that rows enter and leave between device
calls, as vLLM, TGI and JetStream do:
- `admit` prefills new prompts (left padded into a prompt bucket, as the sampler does), samples each one's
  first token and writes its cache, key and sampling parameters into a free slot.
- `decode` advances every slot of a prefix of the slots by up to `steps` tokens. A slot stops on a stop
  token or at its own token limit; slots the host has released (`live` False) generate nothing and are
  emptied, so attention reads nothing of theirs.
Slots hold rows of different lengths, so the cache carries one write index per row (`KVCache.index` of
shape [S], see `models.decoder`), and every row keeps its own PRNG key (split once per token, as in the
sampler): a row's samples depend on its own key and logits only, not on which slot it has or what shares
the batch. Both functions are pure; the engine jits them with the keyword arguments static and the state
donated, so the cache is updated in place. Compiled shapes: one `admit` per (rows, prompt bucket), one
`decode` per (slot prefix, steps, top-log-prob variant).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlvr_jax.generate.sampler import RowParams
from rlvr_jax.generate.sampling import sample_tokens, sample_tokens_with_top, split_key
from rlvr_jax.models.decoder import KVCache, apply, logits_from_hidden

Array = jax.Array


class SlotState(NamedTuple):
    """Every slot's decoding state, all with a leading [S] axis (a pytree the engine donates)."""

    cache: KVCache  # index: [S], each slot's next cache position
    last: Array  # [S] int32, the token each slot feeds next
    key: Array  # [S, words] uint32, each slot's PRNG key data (`jax.random.key_data`)
    done: Array  # [S] bool: stopped (stop token, token limit) or empty
    count: Array  # [S] int32, tokens generated so far
    limit: Array  # [S] int32, the row's max_tokens
    params: RowParams  # [S] temperature / top_k / top_p


class Emitted(NamedTuple):
    """Tokens one device call produced, per row and step (rows: the call's rows; steps: its columns).

    tokens: [R, T] int32 (the pad id where nothing was emitted); logprobs: [R, T] float32, the sampled
    token's log-prob under softmax(logits / T) before top-k / top-p (`sample_tokens`' definition);
    emitted: [R, T] bool; top_ids / top_logprobs: [R, T, K], the K most probable tokens under the same
    distribution, best first (K = 0 in a call that was not asked for them).
    """

    tokens: Array
    logprobs: Array
    emitted: Array
    top_ids: Array
    top_logprobs: Array


def keys_from_words(words: Array, impl: str | None) -> Array:
    """[rows, 3] uint32 key material -> [rows] typed keys: key(low word), then the high word and the
    choice index folded in. A row's key depends on nothing else in its batch."""

    def one(w: Array) -> Array:
        key = jax.random.key(w[0], impl=impl)
        return jax.random.fold_in(jax.random.fold_in(key, w[1]), w[2])

    return jax.vmap(one)(words)


def init_slots(cfg: Any, slots: int, max_len: int, impl: str | None, cache_dtype: Any = None) -> SlotState:
    """S empty slots (done, nothing cached) with a cache of `max_len` positions each."""
    cache = KVCache.init(cfg, slots, max_len, cache_dtype)
    words = jax.random.key_data(jax.random.key(0, impl=impl)).shape[-1]
    return SlotState(
        cache=cache._replace(index=jnp.zeros((slots,), jnp.int32)),
        last=jnp.zeros((slots,), jnp.int32),
        key=jnp.zeros((slots, words), jnp.uint32),
        done=jnp.ones((slots,), bool),
        count=jnp.zeros((slots,), jnp.int32),
        limit=jnp.zeros((slots,), jnp.int32),
        params=RowParams(
            temperature=jnp.zeros((slots,), jnp.float32),
            top_k=jnp.zeros((slots,), jnp.int32),
            top_p=jnp.ones((slots,), jnp.float32),
        ),
    )


def _sample(key: Array, logits: Array, params: RowParams, top_k: int) -> tuple[Array, Array, Array, Array]:
    """(tokens, log-probs, top ids [R, top_k], top log-probs [R, top_k]) through the sampler's own
    functions, on the filtering path the static engine uses (so a row samples the same in either)."""
    if top_k == 0:
        token, logprob = sample_tokens(key, logits, *params, use_filters=True)
        rows = logits.shape[0]
        return token, logprob, jnp.zeros((rows, 0), jnp.int32), jnp.zeros((rows, 0), jnp.float32)
    return sample_tokens_with_top(key, logits, *params, use_filters=True, top_logprobs=top_k)


def admit(
    cfg: Any,
    arrays: dict,
    state: SlotState,
    prompt_ids: Array,
    prompt_mask: Array,
    words: Array,
    row_params: RowParams,
    limits: Array,
    slots: Array,
    *,
    stop_ids: tuple[int, ...],
    top_k: int,
    impl: str | None,
) -> tuple[SlotState, Emitted]:
    """Prefills b prompts ([b, P], left padded), samples their first tokens and puts them in `slots`.

    words: [b, 3] key material (`keys_from_words`); limits: [b] max_tokens; slots: [b] slot of each row,
    S (out of range) for filler rows, whose writes are dropped. Returns the new state and the first
    tokens ([b, 1]) with their log-probs and top-k log-probs.
    """
    b, P = prompt_ids.shape
    cache = KVCache.init(cfg, b, P, state.cache.k[0].dtype)
    hidden, cache = apply(cfg, arrays, prompt_ids, mask=prompt_mask, cache=cache, return_hidden=True)
    logits = logits_from_hidden(cfg, arrays, hidden[:, -1:])[:, 0]
    keys, now = split_key(keys_from_words(words, impl))
    token, logprob, top_ids, top_lps = _sample(now, logits, row_params, top_k)
    done = jnp.isin(token, jnp.asarray(stop_ids, jnp.int32)) | (limits <= 1)

    def put(full: Array, part: Array) -> Array:
        return full.at[slots].set(part.astype(full.dtype), mode="drop")

    def put_prompt(full: Array, part: Array) -> Array:
        return full.at[slots, :, :P].set(part.astype(full.dtype), mode="drop")

    max_len = state.cache.max_len
    new_cache = KVCache(
        k=tuple(map(put_prompt, state.cache.k, cache.k)),
        v=tuple(map(put_prompt, state.cache.v, cache.v)),
        valid=put(state.cache.valid, jnp.pad(prompt_mask.astype(bool), ((0, 0), (0, max_len - P)))),
        index=put(state.cache.index, jnp.full((b,), P, jnp.int32)),
    )
    new_state = SlotState(
        cache=new_cache,
        last=put(state.last, token),
        key=put(state.key, jax.random.key_data(keys)),
        done=put(state.done, done),
        count=put(state.count, jnp.ones((b,), jnp.int32)),
        limit=put(state.limit, limits),
        params=RowParams(*map(put, state.params, row_params)),
    )
    first = Emitted(
        tokens=token[:, None],
        logprobs=logprob[:, None],
        emitted=jnp.ones((b, 1), bool),
        top_ids=top_ids[:, None],
        top_logprobs=top_lps[:, None],
    )
    return new_state, first


def decode(
    cfg: Any,
    arrays: dict,
    state: SlotState,
    live: Array,
    *,
    rows: int,
    steps: int,
    stop_ids: tuple[int, ...],
    pad_id: int,
    top_k: int,
    impl: str | None,
) -> tuple[SlotState, Emitted]:
    """Advances slots 0..rows-1 by up to `steps` tokens each (fewer once every one of them is done).

    live: [S] bool, the slots the host still reads; the others are emptied (their cache marked invalid,
    their write index reset) so they cost nothing but their share of the matmuls. Only the first `rows`
    slots are computed: the host fills slots lowest first, so a lightly loaded server runs a small
    prefix (a compiled bucket) rather than all S. Returns the new state and [rows, steps] emissions.
    """
    total = state.last.shape[0]
    part = state if rows == total else jax.tree.map(lambda x: x[:rows], state)
    live = live[:rows]
    part = part._replace(
        cache=part.cache._replace(
            valid=part.cache.valid & live[:, None], index=jnp.where(live, part.cache.index, 0)
        ),
        done=part.done | ~live,
    )
    stops = jnp.asarray(stop_ids, jnp.int32)
    out = Emitted(
        tokens=jnp.full((rows, steps), pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, steps), jnp.float32),
        emitted=jnp.zeros((rows, steps), bool),
        top_ids=jnp.zeros((rows, steps, top_k), jnp.int32),
        top_logprobs=jnp.zeros((rows, steps, top_k), jnp.float32),
    )

    def cond(carry: tuple[Array, SlotState, Emitted]) -> Array:
        t, s, _ = carry
        return (t < steps) & ~jnp.all(s.done)

    def body(carry: tuple[Array, SlotState, Emitted]) -> tuple[Array, SlotState, Emitted]:
        t, s, out = carry
        active = ~s.done
        logits, cache = apply(cfg, arrays, s.last[:, None], mask=active[:, None], cache=s.cache)
        logits = logits[:, 0]
        cache = cache._replace(index=jnp.where(active, cache.index, s.cache.index))  # done rows stay put
        keys, now = split_key(jax.random.wrap_key_data(s.key, impl=impl))
        token, logprob, top_ids, top_lps = _sample(now, logits, s.params, top_k)
        token = jnp.where(active, token, pad_id)
        count = s.count + active
        done = s.done | (active & (jnp.isin(token, stops) | (count >= s.limit)))
        column = lambda buf, col: jax.lax.dynamic_update_slice_in_dim(buf, col[:, None], t, axis=1)
        out = Emitted(
            tokens=column(out.tokens, token),
            logprobs=column(out.logprobs, jnp.where(active, logprob, 0.0)),
            emitted=column(out.emitted, active),
            top_ids=column(out.top_ids, top_ids),
            top_logprobs=column(out.top_logprobs, top_lps),
        )
        s = s._replace(cache=cache, last=token, key=jax.random.key_data(keys), done=done, count=count)
        return t + 1, s, out

    _, part, out = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), part, out))
    if rows < total:
        put = lambda full, new: jax.lax.dynamic_update_slice_in_dim(full, new, 0, axis=0)
        part = jax.tree.map(put, state, part)
    return part, out
