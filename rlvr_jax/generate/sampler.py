"""The rollout engine: batched prefill, then a decode loop that never leaves the device.

`generate` is a pure function of (graphdef, params, prompts, key): prefill the left-padded prompts once
into a preallocated KV cache, copy each prompt's cache to its G group members, then run a
`lax.while_loop` that samples one token per row per step and stops early when every row has hit a stop
token. Shapes are static; `Sampler` rounds prompt lengths and generation lengths up to buckets so that the
number of compilations stays small and is counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.generate.sampling import sample_tokens
from rlvr_jax.models.decoder import (
    Decoder,
    KVCache,
    apply,
    fuse_projections,
    logits_from_hidden,
    unstack_layers,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class RowParams(NamedTuple):
    """Per-row sampling parameters as device arrays (so rows of one batch may differ)."""

    temperature: Array
    top_k: Array
    top_p: Array

    @classmethod
    def broadcast(cls, params: SamplingParams, rows: int) -> RowParams:
        return cls(
            temperature=jnp.full((rows,), params.temperature, jnp.float32),
            top_k=jnp.full((rows,), params.top_k, jnp.int32),
            top_p=jnp.full((rows,), params.top_p, jnp.float32),
        )


class GenerateOutput(NamedTuple):
    """Generated tokens for B*G rows (group members adjacent: row i*G + g is sample g of prompt i).

    tokens: [rows, N] int32, padded with the pad id after a row stops.
    logprobs: [rows, N] float32 log-prob of each sampled token (see `sample_tokens`), 0 on padding.
    mask: [rows, N] bool, True for generated tokens up to and including the stop token.
    lengths: [rows] number of generated tokens (mask.sum(-1)).
    finished: [rows] bool, True when the row ended on a stop token (False: hit max_new_tokens).
    steps: scalar, decode steps run (fewer than N when every row stopped early).
    """

    tokens: Array
    logprobs: Array
    mask: Array
    lengths: Array
    finished: Array
    steps: Array


def generate(
    graphdef: nnx.GraphDef,
    params: Any,
    prompt_ids: Array,
    prompt_mask: Array,
    key: Array,
    row_params: RowParams,
    limit: Array | int | None = None,
    *,
    max_new_tokens: int,
    stop_ids: tuple[int, ...],
    pad_id: int,
    group_size: int = 1,
    use_filters: bool = False,
    top_k_only: int = 0,
    cache_dtype: Any = None,
) -> GenerateOutput:
    """Samples `group_size` completions for each prompt. Pure; jit it with the keyword args static.

    prompt_ids/prompt_mask: [B, P] left padded. row_params: arrays of shape [B * group_size].
    limit: decode at most this many tokens (a traced scalar <= max_new_tokens, which sizes the buffers),
      so requests of different lengths share one compiled bucket without generating past what they asked.
    """
    model: Decoder = nnx.merge(graphdef, params)
    cfg = model.cfg
    B, P = prompt_ids.shape
    G, N = group_size, max_new_tokens
    rows = B * G
    # Per-layer weights are sliced out of the stacked parameters (and q/k/v, gate/up fused) once,
    # outside the decode loop.
    arrays = model.arrays()
    arrays["layers"] = [fuse_projections(cfg, p) for p in unstack_layers(arrays["layers"], cfg.num_layers)]

    # Prefill each prompt once, then give every group member its own copy of the prompt's cache.
    cache = KVCache.init(cfg, B, P + N, cache_dtype)
    hidden, cache = apply(cfg, arrays, prompt_ids, mask=prompt_mask, cache=cache, return_hidden=True)
    last_logits = logits_from_hidden(cfg, arrays, hidden[:, -1:])[:, 0]  # only the last position
    if G > 1:
        cache = cache.repeat(G)
        last_logits = jnp.repeat(last_logits, G, axis=0)

    stops = jnp.asarray(stop_ids, jnp.int32)
    key, first_key = jax.random.split(key)
    token, logprob = sample_tokens(
        first_key, last_logits, *row_params, use_filters=use_filters, top_k_only=top_k_only
    )

    # Rows with an empty prompt (filler rows that make a batch divide over a mesh) generate nothing.
    empty = jnp.repeat(~jnp.any(prompt_mask, axis=1), G)
    token = jnp.where(empty, pad_id, token)
    tokens = jnp.full((rows, N), pad_id, jnp.int32).at[:, 0].set(token)
    logprobs = jnp.zeros((rows, N), jnp.float32).at[:, 0].set(jnp.where(empty, 0.0, logprob))
    done = jnp.isin(token, stops) | empty
    mask = jnp.zeros((rows, N), bool).at[:, 0].set(~empty)

    limit = N if limit is None else jnp.minimum(limit, N)

    def cond(carry):
        step, _, _, _, done, _, _, _ = carry
        return (step < limit) & ~jnp.all(done)

    def body(carry):
        step, tokens, logprobs, mask, done, last, cache, key = carry
        logits, cache = apply(cfg, arrays, last[:, None], mask=jnp.ones((rows, 1), bool), cache=cache)
        key, sub = jax.random.split(key)
        new, lp = sample_tokens(
            sub, logits[:, 0], *row_params, use_filters=use_filters, top_k_only=top_k_only
        )
        active = ~done
        new = jnp.where(active, new, pad_id)
        tokens = jax.lax.dynamic_update_slice(tokens, new[:, None], (0, step))
        logprobs = jax.lax.dynamic_update_slice(logprobs, jnp.where(active, lp, 0.0)[:, None], (0, step))
        mask = jax.lax.dynamic_update_slice(mask, active[:, None], (0, step))
        done = done | (active & jnp.isin(new, stops))
        return step + 1, tokens, logprobs, mask, done, new, cache, key

    init = (jnp.ones((), jnp.int32), tokens, logprobs, mask, done, token, cache, key)
    steps, tokens, logprobs, mask, done, _, _, _ = jax.lax.while_loop(cond, body, init)
    return GenerateOutput(
        tokens=tokens,
        logprobs=logprobs,
        mask=mask,
        lengths=jnp.sum(mask, axis=-1, dtype=jnp.int32),
        finished=done,
        steps=steps,
    )


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (beyond the largest, the next multiple of it)."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return top * math.ceil(n / top)


DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_NEW_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass
class Completion:
    """One decoded sample, for host-side consumers (rewards, evaluation, the server)."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finished: bool  # ended on a stop token


class Sampler:
    """Host-side driver: tokenises, buckets shapes, calls the jitted `generate`, decodes.

    Keeps one compiled executable per (batch, prompt bucket, new-token bucket, group, filters) and counts
    compilations in `compile_count`, so tests and servers can check that recompiles stay bounded.
    """

    def __init__(
        self,
        model: Decoder,
        tokenizer: Any,
        *,
        prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
        new_token_buckets: Sequence[int] = DEFAULT_NEW_TOKEN_BUCKETS,
        prng_impl: str | None = None,
        mesh: Any = None,
        rules: Any = None,
    ):
        """prng_impl: JAX PRNG implementation for integer seeds ("threefry2x32", "rbg", "unsafe_rbg"; None =
        JAX's default). rbg draws the per-step vocabulary-sized noise much faster on GPU.

        mesh: a `jax.sharding.Mesh` (see `rlvr_jax.sharding.make_mesh`) for data-parallel rollouts: the
        parameters are placed on it by their logical axes (`rules`, default `DEFAULT_RULES`) and prompt
        rows are split over its batch axes, so every device decodes its own rows."""
        self.graphdef, self.params = nnx.split(model)
        self.config = model.cfg
        self.tokenizer = tokenizer
        self.prompt_buckets = tuple(prompt_buckets)
        self.new_token_buckets = tuple(new_token_buckets)
        self.compile_count = 0
        self._compiled: dict[tuple, Any] = {}
        self.last_timing: dict[str, float] = {}
        self.prng_impl = prng_impl
        self.mesh = mesh
        if mesh is not None:
            from rlvr_jax import sharding

            self.rules = rules or sharding.DEFAULT_RULES
            self._param_shardings = sharding.param_shardings(self.params, mesh, self.rules)
            self.params = sharding.put_on_mesh(self.params, self._param_shardings)

    def update_params(self, params: Any) -> None:
        """Points the sampler at new parameters (same structure): the trainer calls this after a step."""
        self.params = params

    def _fn(self, key: tuple) -> Any:
        """The jitted sampler for one shape bucket: fn(params, ids, mask, key, row_params, limit)."""
        if key not in self._compiled:
            _, _, N, G, filters, top_k_only, stops, pad = key
            fn = functools.partial(
                generate,
                self.graphdef,
                max_new_tokens=N,
                stop_ids=stops,
                pad_id=pad,
                group_size=G,
                use_filters=filters,
                top_k_only=top_k_only,
            )
            if self.mesh is None:
                self._compiled[key] = jax.jit(fn)
            else:
                from jax.sharding import NamedSharding, PartitionSpec

                from rlvr_jax import sharding

                rows = sharding.batch_sharding(self.mesh, self.rules)
                same = NamedSharding(self.mesh, PartitionSpec())
                self._compiled[key] = jax.jit(
                    fn,
                    in_shardings=(self._param_shardings, rows, rows, same, RowParams(rows, rows, rows), same),
                    out_shardings=GenerateOutput(rows, rows, rows, rows, rows, same),
                )
            self.compile_count += 1
        return self._compiled[key]

    def _pad_rows(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Adds empty prompt rows until the row count divides over the mesh's batch axes."""
        if self.mesh is None:
            return ids, mask
        from rlvr_jax import sharding

        extra = -len(ids) % sharding.batch_shards(self.mesh, self.rules)
        if not extra:
            return ids, mask
        pad_ids = np.full((extra, ids.shape[1]), self.tokenizer.pad_id, ids.dtype)
        pad_mask = np.zeros((extra, mask.shape[1]), bool)  # empty prompts: done from the start
        return np.concatenate([ids, pad_ids]), np.concatenate([mask, pad_mask])

    def generate_ids(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        params: SamplingParams,
        *,
        seed: int | Array = 0,
        group_size: int = 1,
        row_params: RowParams | None = None,
    ) -> GenerateOutput:
        """Runs the sampler on already-tokenised, left-padded prompts (padded here up to a bucket)."""
        B, P = prompt_ids.shape
        P_b = bucket(P, self.prompt_buckets)
        N_b = bucket(params.max_new_tokens, self.new_token_buckets)
        if P_b + N_b > self.config.max_position_embeddings and self.config.positional == "learned":
            raise ValueError(
                f"prompt ({P}) + new tokens ({params.max_new_tokens}) exceed the model's "
                f"{self.config.max_position_embeddings} positions"
            )
        pad = self.tokenizer.pad_id
        ids = np.full((B, P_b), pad, np.int32)
        mask = np.zeros((B, P_b), bool)
        ids[:, P_b - P :] = prompt_ids
        mask[:, P_b - P :] = prompt_mask
        ids, mask = self._pad_rows(ids, mask)
        rows = len(ids) * group_size
        custom_rows = row_params is not None  # per-row filters may differ from `params`
        if row_params is None:
            row_params = RowParams.broadcast(params, rows)
        elif len(row_params.temperature) != rows:
            fill = RowParams.broadcast(params, rows - len(row_params.temperature))
            row_params = RowParams(*(jnp.concatenate([a, b]) for a, b in zip(row_params, fill, strict=True)))
        use_filters = bool(params.top_k > 0 or params.top_p < 1.0)
        # Top-k without top-p for every row: a static lax.top_k instead of a vocabulary sort.
        top_k_only = params.top_k if params.top_k > 0 and params.top_p >= 1.0 and not custom_rows else 0
        fn = self._fn(
            (len(ids), P_b, N_b, group_size, use_filters, top_k_only, tuple(self.tokenizer.stop_ids), pad)
        )
        key = jax.random.key(seed, impl=self.prng_impl) if isinstance(seed, int) else seed
        t0 = time.perf_counter()
        limit = jnp.asarray(params.max_new_tokens, jnp.int32)
        out = fn(self.params, jnp.asarray(ids), jnp.asarray(mask), key, row_params, limit)
        out = jax.block_until_ready(out)
        if len(ids) != B:  # drop the rows added to fill the mesh
            out = out._replace(**{f: getattr(out, f)[: B * group_size] for f in out._fields if f != "steps"})
        self.last_timing = {"seconds": time.perf_counter() - t0, "steps": int(out.steps)}
        if N_b != params.max_new_tokens:
            out = _truncate(out, params.max_new_tokens)
        return out

    def complete(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        chat: bool = True,
        system: str | None = None,
        seed: int = 0,
        group_size: int = 1,
    ) -> list[list[Completion]]:
        """Text in, text out: returns `group_size` completions for each prompt."""
        texts = [self.tokenizer.format(p, chat=chat, system=system) for p in prompts]
        ids, mask = self.tokenizer.encode_batch(texts, chat_formatted=chat)
        out = jax.device_get(self.generate_ids(ids, mask, params, seed=seed, group_size=group_size))
        results: list[list[Completion]] = []
        for i in range(len(prompts)):
            group = []
            for g in range(group_size):
                r = i * group_size + g
                n = int(out.lengths[r])
                token_ids = [int(t) for t in out.tokens[r, :n]]
                answer = self.tokenizer.truncate_at_stop(token_ids)
                group.append(
                    Completion(
                        text=self.tokenizer.decode(answer),
                        token_ids=token_ids,
                        logprobs=[float(x) for x in out.logprobs[r, :n]],
                        finished=bool(out.finished[r]),
                    )
                )
            results.append(group)
        return results


def _truncate(out: GenerateOutput, n: int) -> GenerateOutput:
    """Cuts the unused tail of the bucket off the generation axis (decoding stopped at n already)."""
    return out._replace(tokens=out.tokens[:, :n], logprobs=out.logprobs[:, :n], mask=out.mask[:, :n])
