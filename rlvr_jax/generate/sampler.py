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
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.compiled import abstract, outputs
from rlvr_jax.generate.sampling import row_keys, sample_tokens, sample_tokens_with_top, split_key
from rlvr_jax.models.decoder import (
    Decoder,
    KVCache,
    apply,
    fuse_projections,
    logits_from_hidden,
    prefill_cache,
    unstack_layers,
)

Array = jax.Array
_log = logging.getLogger(__name__)


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
    top_ids / top_logprobs: [rows, N, k] int32 / float32, each position's k most probable tokens and their
      log-probs under the distribution `logprobs` uses, best first (0 on padding); None unless the
      sampler was asked for `top_logprobs=k` > 0 (the inference server's OpenAI `top_logprobs`).
    """

    tokens: Array
    logprobs: Array
    mask: Array
    lengths: Array
    finished: Array
    steps: Array
    top_ids: Array | None = None
    top_logprobs: Array | None = None


class DecodeState(NamedTuple):
    """Everything the decode loop carries between steps (a pytree; `stream` hands it back and forth)."""

    step: Array  # next column of `tokens` to write (1 after prefill: column 0 is the first token)
    tokens: Array
    logprobs: Array
    mask: Array
    done: Array
    last: Array  # the token each row feeds next
    cache: KVCache
    key: Array
    top_ids: Array | None = None  # [rows, N, k] with top_logprobs=k > 0, else None
    top_logprobs: Array | None = None


def _decode_arrays(graphdef: nnx.GraphDef, params: Any, attention: str | None) -> tuple[Any, dict]:
    """The config and parameter arrays the decode loop uses. Per-layer weights are sliced out of the
    stacked parameters (and q/k/v, gate/up fused) once, outside the loop."""
    model: Decoder = nnx.merge(graphdef, params)
    cfg = model.cfg if attention is None else model.cfg.replace(attention=attention)
    arrays = model.arrays()
    arrays["stacked_layers"] = arrays["layers"]  # the prefill scans these (`prefill_cache`)
    arrays["layers"] = [fuse_projections(cfg, p) for p in unstack_layers(arrays["layers"], cfg.num_layers)]
    return cfg, arrays


def _prefill(
    cfg: Any,
    arrays: dict,
    prompt_ids: Array,
    prompt_mask: Array,
    key: Array,
    row_params: RowParams,
    *,
    max_new_tokens: int,
    stop_ids: tuple[int, ...],
    pad_id: int,
    group_size: int,
    use_filters: bool,
    top_k_only: int,
    cache_dtype: Any,
    top_logprobs: int = 0,
) -> DecodeState:
    """Prefills each prompt once, gives every group member its own copy of the prompt's cache, and
    samples the first token."""
    B, P = prompt_ids.shape
    G, N = group_size, max_new_tokens
    rows = B * G
    stacked = {**arrays, "layers": arrays.get("stacked_layers", arrays["layers"])}
    hidden, cache = prefill_cache(cfg, stacked, prompt_ids, prompt_mask, P + N, cache_dtype)
    last_logits = logits_from_hidden(cfg, arrays, hidden[:, -1:])[:, 0]  # only the last position
    if G > 1:
        cache = cache.repeat(G)
        last_logits = jnp.repeat(last_logits, G, axis=0)

    key, first_key = split_key(key)
    token, logprob, top = _sample_step(
        first_key, last_logits, row_params, use_filters=use_filters, top_k_only=top_k_only,
        top_logprobs=top_logprobs,
    )  # fmt: skip
    # Rows with an empty prompt (filler rows that make a batch divide over a mesh) generate nothing.
    empty = jnp.repeat(~jnp.any(prompt_mask, axis=1), G)
    token = jnp.where(empty, pad_id, token)
    tops: dict[str, Array] = {}
    if top is not None:
        first_ids, first_lps = (jnp.where(empty[:, None], jnp.zeros_like(x), x) for x in top)
        tops = dict(
            top_ids=jnp.zeros((rows, N, top_logprobs), jnp.int32).at[:, 0].set(first_ids),
            top_logprobs=jnp.zeros((rows, N, top_logprobs), jnp.float32).at[:, 0].set(first_lps),
        )
    return DecodeState(
        step=jnp.ones((), jnp.int32),
        tokens=jnp.full((rows, N), pad_id, jnp.int32).at[:, 0].set(token),
        logprobs=jnp.zeros((rows, N), jnp.float32).at[:, 0].set(jnp.where(empty, 0.0, logprob)),
        mask=jnp.zeros((rows, N), bool).at[:, 0].set(~empty),
        done=jnp.isin(token, jnp.asarray(stop_ids, jnp.int32)) | empty,
        last=token,
        cache=cache,
        key=key,
        **tops,
    )


def _sample_step(
    key: Array,
    logits: Array,
    row_params: RowParams,
    *,
    use_filters: bool,
    top_k_only: int,
    top_logprobs: int,
) -> tuple[Array, Array, tuple[Array, Array] | None]:
    """(tokens, log-probs, (top ids, top log-probs) or None): the top-k alternatives only when asked."""
    if top_logprobs <= 0:
        token, logprob = sample_tokens(
            key, logits, *row_params, use_filters=use_filters, top_k_only=top_k_only
        )
        return token, logprob, None
    token, logprob, ids, lps = sample_tokens_with_top(
        key, logits, *row_params, use_filters=use_filters, top_k_only=top_k_only, top_logprobs=top_logprobs
    )
    return token, logprob, (ids, lps)


def _decode(
    cfg: Any,
    arrays: dict,
    state: DecodeState,
    row_params: RowParams,
    until: Array | int,
    *,
    stop_ids: tuple[int, ...],
    pad_id: int,
    use_filters: bool,
    top_k_only: int,
    top_logprobs: int = 0,
) -> DecodeState:
    """Decodes one token per row per step until step `until` or until every row is done."""
    rows = state.tokens.shape[0]
    stops = jnp.asarray(stop_ids, jnp.int32)

    def cond(s: DecodeState):
        return (s.step < until) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        logits, cache = apply(cfg, arrays, s.last[:, None], mask=jnp.ones((rows, 1), bool), cache=s.cache)
        key, sub = split_key(s.key)
        new, lp, top = _sample_step(
            sub, logits[:, 0], row_params, use_filters=use_filters, top_k_only=top_k_only,
            top_logprobs=top_logprobs,
        )  # fmt: skip
        active = ~s.done
        new = jnp.where(active, new, pad_id)
        at = (0, s.step)
        tops: dict[str, Array] = {}
        if top is not None:
            on = active[:, None]
            tops = dict(
                top_ids=jax.lax.dynamic_update_slice(s.top_ids, jnp.where(on, top[0], 0)[:, None], (*at, 0)),
                top_logprobs=jax.lax.dynamic_update_slice(
                    s.top_logprobs, jnp.where(on, top[1], 0.0)[:, None], (*at, 0)
                ),
            )
        return DecodeState(
            step=s.step + 1,
            tokens=jax.lax.dynamic_update_slice(s.tokens, new[:, None], at),
            logprobs=jax.lax.dynamic_update_slice(s.logprobs, jnp.where(active, lp, 0.0)[:, None], at),
            mask=jax.lax.dynamic_update_slice(s.mask, active[:, None], at),
            done=s.done | (active & jnp.isin(new, stops)),
            last=new,
            cache=cache,
            key=key,
            **tops,
        )

    return jax.lax.while_loop(cond, body, state)


def _output(state: DecodeState) -> GenerateOutput:
    return GenerateOutput(
        tokens=state.tokens,
        logprobs=state.logprobs,
        mask=state.mask,
        lengths=jnp.sum(state.mask, axis=-1, dtype=jnp.int32),
        finished=state.done,
        steps=state.step,
        top_ids=state.top_ids,
        top_logprobs=state.top_logprobs,
    )


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
    attention: str | None = None,
    top_logprobs: int = 0,
) -> GenerateOutput:
    """Samples `group_size` completions for each prompt. Pure; jit it with the keyword args static.

    prompt_ids/prompt_mask: [B, P] left padded. row_params: arrays of shape [B * group_size].
    key: one key for the batch, or [B * group_size] typed keys, one per row (see `sampling.row_keys`).
    limit: decode at most this many tokens (a traced scalar <= max_new_tokens, which sizes the buffers),
      so requests of different lengths share one compiled bucket without generating past what they asked.
    attention: override the model's attention kernels ("auto" / "xla", see `ModelConfig.attention`).
    top_logprobs: also return each position's k most probable tokens (`GenerateOutput.top_ids`); 0: none.
    """
    cfg, arrays = _decode_arrays(graphdef, params, attention)
    state = _prefill(
        cfg, arrays, prompt_ids, prompt_mask, key, row_params,
        max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id, group_size=group_size,
        use_filters=use_filters, top_k_only=top_k_only, cache_dtype=cache_dtype, top_logprobs=top_logprobs,
    )  # fmt: skip
    limit = max_new_tokens if limit is None else jnp.minimum(limit, max_new_tokens)
    state = _decode(
        cfg, arrays, state, row_params, limit,
        stop_ids=stop_ids, pad_id=pad_id, use_filters=use_filters, top_k_only=top_k_only,
        top_logprobs=top_logprobs,
    )  # fmt: skip
    return _output(state)


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (beyond the largest, the next multiple of it)."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return top * math.ceil(n / top)


class _Rollout:
    """One shape bucket's rollout as two compiled programs: `prefill` (the prompts into the KV cache, the
    first token) and `decode` (the loop, ending in the output), both on the decode-ready weights that
    `Sampler._decode_ready` slices and fuses once per call (one program for every bucket).

    Why not one jit of `generate`: one program per bucket then holds the weight preparation, the prefill
    and the loop, and XLA compiles that whole for each prompt bucket; here the preparation is compiled
    once and each bucket adds a prefill (its layers scanned: one compiled layer, `prefill_cache`) and a
    loop (`benchmarks/compile_time.py` measures both layouts). Sampling is unchanged: the same functions
    in the same order with the same keys (a test compares with `generate` token for token), two more
    dispatches per rollout, and the state handed from one program to the other stays on the device
    (donated to the loop, which then updates the same cache in place).
    """

    def __init__(self, sampler: Sampler, key: tuple):
        static = sampler._static(key)
        attention = static.pop("attention")
        cfg = sampler.config if attention is None else sampler.config.replace(attention=attention)
        decode_static = {k: v for k, v in static.items() if k not in ("max_new_tokens", "group_size")}
        self.prepare = sampler._decode_ready

        def rollout_prefill(arrays, prompt_ids, prompt_mask, rng, row_params):
            return _prefill(cfg, arrays, prompt_ids, prompt_mask, rng, row_params, cache_dtype=None, **static)

        def rollout_decode(arrays, state, row_params, limit):
            # The final state goes out too, unused: every donated input buffer then has an output of its
            # shape to be reused for, so the loop updates the prefill's cache in place instead of a copy.
            state = _decode(
                cfg, arrays, state, row_params, jnp.minimum(limit, static["max_new_tokens"]), **decode_static
            )
            return _output(state), state

        # (prefill, decode) compiled ahead of time (`compile`), called directly; None: through the jits.
        self._exe: tuple[Any, Any] | None = None
        self._committed = sampler.mesh is not None  # the prefill's outputs are placed (on the mesh)
        if sampler.mesh is None:
            self.prefill = jax.jit(rollout_prefill)
            self.decode = jax.jit(rollout_decode, donate_argnums=(1,))
            return
        from jax.sharding import NamedSharding, PartitionSpec

        from rlvr_jax import sharding

        rows = sharding.batch_sharding(sampler.mesh, sampler.rules)
        same = NamedSharding(sampler.mesh, PartitionSpec())
        tops = (rows, rows) if key[-1] > 0 else (None, None)
        self.prefill = jax.jit(
            rollout_prefill,
            in_shardings=(sampler._decode_shardings(), rows, rows, same, RowParams(rows, rows, rows)),
        )
        self.decode = jax.jit(
            rollout_decode,
            donate_argnums=(1,),
            out_shardings=(GenerateOutput(rows, rows, rows, rows, rows, same, *tops), None),
        )

    def __call__(
        self, params: Any, ids: Array, mask: Array, rng: Array, row_params: RowParams, limit: Array
    ) -> GenerateOutput:
        arrays = self.prepare(params)
        if self._exe is None:
            state = self.prefill(arrays, ids, mask, rng, row_params)
            return self.decode(arrays, state, row_params, limit)[0]
        prefill, decode = self._exe
        try:  # an executable checks its arguments before it runs (nothing is donated yet when it raises)
            state = prefill(arrays, ids, mask, rng, row_params)
        except (TypeError, ValueError) as e:
            self._drop_exe("prefill", e)
            return self(params, ids, mask, rng, row_params, limit)
        try:
            return decode(arrays, state, row_params, limit)[0]
        except (TypeError, ValueError) as e:
            self._drop_exe("decode loop", e)
            return self.decode(arrays, state, row_params, limit)[0]

    def _drop_exe(self, which: str, error: Exception) -> None:
        """The executables compiled ahead of time do not take a call's arguments (weights of another dtype
        than at the compile, a placement it did not foresee): said, dropped, and this call and the later
        ones go through the jits, which compile for them."""
        first = str(error).strip().splitlines()[:2]
        _log.warning(
            "the %s compiled ahead of time does not take this call's arguments (%s); compiling for them",
            which, " ".join(first),
        )  # fmt: skip
        self._exe = None

    def compile(
        self, arrays: Any, ids: Any, mask: Any, rng: Any, row_params: Any, limit: Any
    ) -> None:
        """Compiles both programs ahead of time for these arguments, which may be shape structs
        (`rlvr_jax.compiled.abstract`; `arrays` are the decode-ready weights `prepare` returns): nothing
        runs on the device and no buffer is held, so any thread may call this while another dispatches
        steps. The loop is compiled for the prefill's outputs as shape structs (`compiled.outputs`).

        Later calls run the executables directly, not through the jits' caches, which a compile for shape
        structs on a mesh does not fill; a call whose arguments they do not take drops them (`_drop_exe`)."""
        prefill = self.prefill.lower(arrays, ids, mask, rng, row_params).compile()
        state = outputs(prefill, committed=self._committed)
        decode = self.decode.lower(arrays, state, row_params, limit).compile()
        self._exe = (prefill, decode)


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
        self._compiled_lock = threading.Lock()  # the trainer's warm-up compiles buckets from several threads
        self._prepared: tuple[Any, dict] | None = None  # (params, decode-ready arrays) for streaming
        # One jitted preparation for every parameter set (same structure), not one per update_params.
        self._decode_ready = jax.jit(lambda params: _decode_arrays(self.graphdef, params, None)[1])
        self._decode_exe: dict[Any, Any] = {}
        self._decode_lock = threading.Lock()  # `_fn` holds the other lock while a new bucket asks for this
        self.last_timing: dict[str, float] = {}
        self.prng_impl = prng_impl
        self.mesh = mesh
        # The Pallas decode kernel is a custom call the SPMD partitioner cannot split by rows, so on a
        # multi-device mesh decoding uses the einsum attention, which it can (see ModelConfig.attention).
        self._attention = "xla" if mesh is not None and mesh.size > 1 else None
        # A mesh over several processes: every host passes its own prompts and gets its own rows back.
        self.multihost = mesh is not None and any(
            d.process_index != jax.process_index() for d in mesh.devices.flat
        )
        if mesh is not None:
            from rlvr_jax import sharding

            self.rules = rules or sharding.DEFAULT_RULES
            self._param_shardings = sharding.param_shardings(self.params, mesh, self.rules)
            self.params = sharding.put_on_mesh(self.params, self._param_shardings)

    def _decode_compiled(self) -> Any:
        """`_decode_ready` compiled for the current parameters (their structure, dtypes and placements: the
        trainer hands over a bf16 copy of float32 weights; the jit's cache holds it too)."""
        leaves, tree = jax.tree.flatten(self.params)
        signature = (tree, tuple((x.dtype, getattr(x, "sharding", None)) for x in leaves))
        with self._decode_lock:
            if signature not in self._decode_exe:
                self._decode_exe[signature] = self._decode_ready.lower(self.params).compile()
            return self._decode_exe[signature]

    def _decode_shardings(self) -> Any:
        """Where `_decode_ready` places the decode-ready weights on the mesh (the prefill takes them so)."""
        return self._decode_compiled().output_shardings

    def update_params(self, params: Any) -> None:
        """Points the sampler at new parameters (same structure): the trainer calls this after a step."""
        self.params = params

    def _static(self, key: tuple) -> dict[str, Any]:
        _, _, N, G, filters, top_k_only, stops, pad, top_logprobs = key
        return dict(
            max_new_tokens=N, stop_ids=stops, pad_id=pad, group_size=G, use_filters=filters,
            top_k_only=top_k_only, attention=self._attention, top_logprobs=top_logprobs,
        )  # fmt: skip

    def _fn(self, key: tuple) -> _Rollout:
        """The rollout for one shape bucket: fn(params, ids, mask, key, row_params, limit)."""
        with self._compiled_lock:
            if key not in self._compiled:
                self._compiled[key] = _Rollout(self, key)
                self.compile_count += 1
            return self._compiled[key]

    def _stream_fns(self, key: tuple) -> tuple[Any, Any]:
        """Jitted (start, continue) for one bucket: the same loop as `_fn`, cut into chunks. Both take the
        decode-ready arrays (`_stream_arrays`), so a chunk does not re-slice and re-fuse the weights."""
        skey = ("stream", *key)
        if skey not in self._compiled:
            static = self._static(key)
            attention = static.pop("attention")
            cfg = self.config if attention is None else self.config.replace(attention=attention)
            start = jax.jit(functools.partial(_prefill, cfg, cache_dtype=None, **static))
            for name in ("max_new_tokens", "group_size"):
                static.pop(name)
            cont = jax.jit(functools.partial(_decode, cfg, **static), donate_argnums=(1,))
            self._compiled[skey] = (start, cont)
            self.compile_count += 2
        return self._compiled[skey]

    def _stream_arrays(self) -> dict:
        """The parameters as the decode loop uses them (per layer, q/k/v and gate/up fused), prepared once
        per parameter set rather than once per streamed chunk."""
        if self._prepared is None or self._prepared[0] is not self.params:
            self._prepared = (self.params, self._decode_ready(self.params))
        return self._prepared[1]

    def _pad_rows(self, ids: np.ndarray, mask: np.ndarray, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Adds empty prompt rows (done from the start) up to `rows`, or, with rows None, until the row
        count divides over the mesh's batch axes."""
        if self.mesh is None:
            return ids, mask
        from rlvr_jax import sharding

        extra = -len(ids) % sharding.batch_shards(self.mesh, self.rules) if rows is None else rows - len(ids)
        if not extra:
            return ids, mask
        pad_ids = np.full((extra, ids.shape[1]), self.tokenizer.pad_id, ids.dtype)
        pad_mask = np.zeros((extra, mask.shape[1]), bool)
        return np.concatenate([ids, pad_ids]), np.concatenate([mask, pad_mask])

    def _agree(self, rows: int, prompt_len: int, new_tokens: int) -> tuple[int, int, int]:
        """Multi-host: every process must run the same compiled shapes. Returns the largest row count
        (rounded up to this host's row shards), prompt length and max_new_tokens over all processes."""
        from jax.experimental import multihost_utils

        from rlvr_jax import sharding

        sizes = multihost_utils.process_allgather(np.array([rows, prompt_len, new_tokens], np.int32))
        rows, prompt_len, new_tokens = (int(x) for x in np.asarray(sizes).reshape(-1, 3).max(axis=0))
        shards = sharding.local_batch_shards(self.mesh, self.rules)
        return -(-rows // shards) * shards, prompt_len, new_tokens

    def _prepare(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        params: SamplingParams,
        group_size: int,
        row_params: RowParams | None,
        top_logprobs: int = 0,
    ) -> tuple[tuple, np.ndarray, np.ndarray, RowParams, int]:
        """Pads prompts into their bucket (and rows to fill the mesh); returns (bucket key, ids, mask,
        per-row parameters, decode limit)."""
        B, P = prompt_ids.shape
        rows, width, limit = None, P, params.max_new_tokens
        if self.multihost:
            rows, width, limit = self._agree(B, P, limit)
        P_b = bucket(width, self.prompt_buckets)
        N_b = bucket(limit, self.new_token_buckets)
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
        ids, mask = self._pad_rows(ids, mask, rows)
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
        if top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {top_logprobs}")
        stops = tuple(self.tokenizer.stop_ids)
        key = (len(ids), P_b, N_b, group_size, use_filters, top_k_only, stops, pad, top_logprobs)
        return key, ids, mask, row_params, limit

    def _rng(self, seed: int | Array, rows: int) -> Array:
        """The PRNG key: from an integer seed, or as given (one key, or a [rows] array of per-row keys)."""
        if isinstance(seed, int):
            return jax.random.key(seed, impl=self.prng_impl)
        if row_keys(seed) and seed.shape[0] != rows:
            raise ValueError(
                f"{seed.shape[0]} per-row keys for {rows} rows (prompts x group_size); pass one per row"
            )
        return seed

    def _inputs(self, ids: np.ndarray, mask: np.ndarray, row_params: RowParams) -> tuple[Any, Any, Any]:
        """Device inputs: this host's rows become its part of the global arrays on a multi-host mesh."""
        if not self.multihost:
            return jnp.asarray(ids), jnp.asarray(mask), row_params
        from rlvr_jax import sharding

        row_params = RowParams(*(np.asarray(x) for x in row_params))
        return sharding.host_local_to_global((ids, mask, row_params), self.mesh, self.rules)

    def _local(self, out: GenerateOutput) -> GenerateOutput:
        """Multi-host: this host's rows of the global output (numpy), in its prompts' order."""
        if not self.multihost:
            return out
        local = lambda x: _host_rows(x) if x.ndim else np.asarray(x.addressable_data(0))
        return GenerateOutput(*(None if x is None else local(x) for x in out))

    def _finish(self, out: GenerateOutput, rows: int, max_new_tokens: int) -> GenerateOutput:
        """Drops the rows added to fill the mesh and the bucket's unused tail."""
        if out.tokens.shape[0] != rows:
            rowwise = [f for f in out._fields if f != "steps" and getattr(out, f) is not None]
            out = out._replace(**{f: getattr(out, f)[:rows] for f in rowwise})
        if out.tokens.shape[1] != max_new_tokens:
            out = _truncate(out, max_new_tokens)
        return out

    def generate_ids(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        params: SamplingParams,
        *,
        seed: int | Array = 0,
        group_size: int = 1,
        row_params: RowParams | None = None,
        top_logprobs: int = 0,
        weights: Any = None,
    ) -> GenerateOutput:
        """Runs the sampler on already-tokenised, left-padded prompts (padded here up to a bucket).

        seed: an integer, a PRNG key, or a [rows] array of typed keys (`jax.random.key`, one per output row):
        with per-row keys a row's samples depend only on its own key, not on the other rows of the batch.
        top_logprobs: k > 0 also returns every position's k most probable tokens (`GenerateOutput.top_ids`
        / `top_logprobs`); a compiled variant of its own, so rollouts (k = 0) pay nothing for it.
        weights: the parameters to sample with (same structure and dtypes as the sampler's); None = the
        sampler's current ones. The trainer's one-step off-policy mode (`rl.async_rollouts`) passes the
        parameters a rollout started with, so that the hand-over of newer ones while it runs in a worker
        thread cannot change what it samples from.
        """
        key, ids, mask, row_params, limit = self._prepare(
            prompt_ids, prompt_mask, params, group_size, row_params, top_logprobs
        )
        fn = self._fn(key)
        rng = self._rng(seed, len(ids) * group_size)
        t0 = time.perf_counter()
        ids, mask, row_params = self._inputs(ids, mask, row_params)
        weights = self.params if weights is None else weights
        out = fn(weights, ids, mask, rng, row_params, jnp.asarray(limit, jnp.int32))
        out = self._local(jax.block_until_ready(out))
        self.last_timing = {"seconds": time.perf_counter() - t0, "steps": int(out.steps)}
        return self._finish(out, len(prompt_ids) * group_size, params.max_new_tokens)

    def submit_ids(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        params: SamplingParams,
        *,
        seed: int | Array = 0,
        group_size: int = 1,
        weights: Any = None,
    ) -> Callable[[], GenerateOutput]:
        """`generate_ids` cut in two: dispatches the sampler now (JAX runs it asynchronously) and returns a
        function that waits for the output and copies it to the host (numpy arrays).

        Every device computation is dispatched here, in the calling thread; the function returned only
        waits and copies, so another thread may call it. That is what the trainer's one-step off-policy
        mode needs (`rl.async_rollouts`): the main thread dispatches step n + 1's rollout before step n's
        update, so the device samples first, and a worker thread waits for the tokens, detokenises and
        scores them while the device updates. Device work dispatched from two threads could reach the
        devices of a mesh in different orders. One process only (a multi-host mesh gathers its rows with
        collectives).
        """
        if self.multihost:
            raise NotImplementedError("submit_ids runs on one host; use generate_ids on a multi-host mesh")
        key, ids, mask, row_params, limit = self._prepare(prompt_ids, prompt_mask, params, group_size, None)
        fn = self._fn(key)
        rng = self._rng(seed, len(ids) * group_size)
        t0 = time.perf_counter()
        ids, mask, row_params = self._inputs(ids, mask, row_params)
        weights = self.params if weights is None else weights
        out = fn(weights, ids, mask, rng, row_params, jnp.asarray(limit, jnp.int32))
        out = self._finish(out, len(prompt_ids) * group_size, params.max_new_tokens)

        def wait() -> GenerateOutput:
            host = jax.device_get(out)
            self.last_timing = {"seconds": time.perf_counter() - t0, "steps": int(host.steps)}
            return host

        return wait

    def bucket_compile(
        self,
        rows: int,
        prompt_len: int,
        params: SamplingParams,
        *,
        seed: int | Array = 0,
        group_size: int = 1,
    ) -> tuple[tuple, Callable[[], float]]:
        """The compile of one bucket, cut in two: returns (its bucket key, a function that compiles it and
        returns the seconds it took). The shapes and placements are read here, through the same padding,
        keys and input placement as `generate_ids`; the function runs nothing on the device and holds no
        buffer, so it may run in another thread while this one dispatches steps (the trainer's warm-up
        compiles step 1's bucket before it and the others in the background, `rlvr_jax.trainer.warmup`).

        Later calls with this bucket run the executables it leaves (`_Rollout.compile`) and compile
        nothing. seed: pass a key of the kind the real calls pass (a typed key, or an integer with
        `prng_impl`).
        """
        ids = np.full((rows, prompt_len), self.tokenizer.pad_id, np.int32)
        mask = np.ones((rows, prompt_len), bool)
        key, ids, mask, row_params, limit = self._prepare(ids, mask, params, group_size, None)
        fn = self._fn(key)
        rng = self._rng(seed, len(ids) * group_size)
        ids, mask, row_params = self._inputs(ids, mask, row_params)
        arrays = outputs(self._decode_compiled(), committed=self.mesh is not None)
        shapes = abstract((ids, mask, rng, row_params, jnp.asarray(limit, jnp.int32)))

        def compile_now() -> float:
            t0 = time.perf_counter()
            fn.compile(arrays, *shapes)
            return time.perf_counter() - t0

        return key, compile_now

    def stream_ids(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        params: SamplingParams,
        *,
        seed: int | Array = 0,
        group_size: int = 1,
        row_params: RowParams | None = None,
        chunk_tokens: int = 16,
        top_logprobs: int = 0,
    ) -> Iterator[GenerateOutput]:
        """`generate_ids`, yielding as it goes: once after the prefill (the first token of every row),
        then after every `chunk_tokens` decode steps, until every row is done or has its
        `max_new_tokens`. Each yield is cumulative (host numpy arrays of the same fields); the last one
        equals `generate_ids`' result for the same arguments and seed, because it is the same loop with
        the same keys, cut into chunks. For servers: time to first token is one prefill, not a whole
        generation. Each chunk costs one host round trip, so rollouts use `generate_ids`.
        """
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        if self.multihost:
            raise NotImplementedError("stream_ids runs on one host; use generate_ids on a multi-host mesh")
        key, ids, mask, row_params, _ = self._prepare(
            prompt_ids, prompt_mask, params, group_size, row_params, top_logprobs
        )
        start, cont = self._stream_fns(key)
        rng = self._rng(seed, len(ids) * group_size)
        rows, limit = len(prompt_ids) * group_size, params.max_new_tokens
        arrays = self._stream_arrays()
        state = start(arrays, jnp.asarray(ids), jnp.asarray(mask), rng, row_params)
        while True:
            out = self._finish(jax.device_get(_output(state)), rows, limit)
            yield out
            step = int(out.steps)
            if step >= limit or bool(np.all(out.finished)):
                return
            until = jnp.asarray(min(step + chunk_tokens, limit), jnp.int32)
            state = cont(arrays, state, row_params, until)

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


def _host_rows(x: Array) -> np.ndarray:
    """This process's rows of a row-sharded global array, in global row order (replicas counted once)."""
    blocks = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        blocks.setdefault(start, np.asarray(shard.data))
    return np.concatenate([blocks[k] for k in sorted(blocks)])


def _truncate(out: GenerateOutput, n: int) -> GenerateOutput:
    """Cuts the generation axis to n tokens (the bucket's unused tail, or, on a multi-host mesh where
    hosts asked for different lengths, the tokens decoded past this host's request)."""
    mask = out.mask[:, :n]
    lengths = mask.sum(-1).astype(out.lengths.dtype)
    tops = {f: getattr(out, f)[:, :n] for f in ("top_ids", "top_logprobs") if getattr(out, f) is not None}
    return out._replace(
        tokens=out.tokens[:, :n],
        logprobs=out.logprobs[:, :n],
        mask=mask,
        lengths=lengths,
        finished=out.finished & (out.lengths <= n),
        **tops,
    )
