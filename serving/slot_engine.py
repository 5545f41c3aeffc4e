"""The model side of continuous batching: S decode slots on the device, and the compiled calls over them.

`ContinuousEngine` holds the slots' state (`rlvr_jax.generate.slots.SlotState`: one KV cache of S rows,
each row's last token, PRNG key, token count, limit and sampling parameters) and two kinds of jitted call:
- `admit(rows)`: prefills new prompts in a prompt bucket and puts them into the free slots the scheduler
  chose (rows padded up to a batch bucket, prompts left padded, as the static engine does);
- `decode(live, rows, top)`: advances slots 0..rows-1 (`rows` a batch bucket covering the highest slot in
  use) by up to `stream_chunk_tokens` tokens each; with `top` (a row wants top log-probs) all S slots,
  the one shape compiled with them (they are rare, and one variant per bucket would double start-up).
Both donate the state, so the cache is updated in place, and both return device arrays without waiting:
the scheduler (`serving.continuous`) dispatches the next call before it reads the last one's tokens.

Compiled shapes, all built by `warmup` before the server is ready: one prefill per (batch bucket, prompt
bucket), one decode per batch bucket, and one decode of all slots with top log-probs. The new-token
buckets do not multiply them: a row's token limit is data, not shape. Keys, sampling parameters and the
filtering path are those of the static engine (`serving.engine`), so a row's samples do not depend on
what shares the slots.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.generate import slots
from rlvr_jax.generate.sampler import RowParams, Sampler, bucket
from rlvr_jax.serving.config import ServerConfig
from rlvr_jax.serving.engine import Engine, key_words, left_pad

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NewRow:
    """One row (a choice of a job) to prefill into a slot."""

    prompt: Sequence[int]
    slot: int
    seed: int
    choice: int
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int


class ContinuousEngine(Engine):
    """The static engine's checks and prompts, plus S slots and the prefill / decode calls over them."""

    def __init__(self, sampler: Sampler, config: ServerConfig):
        super().__init__(sampler, config)
        self.slots = config.max_batch
        self.steps = config.stream_chunk_tokens
        # Room for the longest prompt bucket and the most tokens a request may ask for; a multiple of 16
        # (128 beyond 128) so that the GPU decode kernel splits the cache into whole blocks.
        need = config.prompt_buckets[-1] + config.max_tokens_limit
        self.max_len = -(-need // 128) * 128 if need > 128 else -(-need // 16) * 16
        self.prng_impl = sampler.prng_impl
        self.stop_tuple = tuple(sorted(self.stop_ids))
        self._state: slots.SlotState | None = None
        self._admit: dict[tuple[int, int], Any] = {}
        self._decode: dict[tuple[int, bool], Any] = {}

    # -- shapes ---------------------------------------------------------------------------------------------
    @property
    def compiled_shapes(self) -> list[tuple]:
        """("prefill", rows, prompt bucket) and ("decode", rows, steps, top log-probs) of every compiled
        call; rows come from the batch buckets (prefill batch sizes, and the slot prefixes decoded)."""
        cfg = self.config
        prefill = [("prefill", b, p) for b in cfg.batch_buckets for p in cfg.prompt_buckets]
        decode = [("decode", b, self.steps, 0) for b in cfg.batch_buckets]
        top = [("decode", self.slots, self.steps, self._top(True))] if self._top(True) else []
        return [*prefill, *decode, *top]

    @property
    def compile_count(self) -> int:
        """Executables compiled so far: the slots' prefills and decodes, and the prompt scorer's."""
        return len(self._admit) + len(self._decode) + self.scorer.compile_count

    def _admit_fn(self, rows: int, prompt_len: int) -> Any:
        key = (rows, prompt_len)
        if key not in self._admit:
            fn = functools.partial(
                slots.admit, self.sampler.config, stop_ids=self.stop_tuple, top_k=self._top(True),
                impl=self.prng_impl,
            )  # fmt: skip
            self._admit[key] = jax.jit(fn, donate_argnums=(1,))
        return self._admit[key]

    def _decode_fn(self, rows: int, top: bool) -> Any:
        key = (rows, top)
        if key not in self._decode:
            fn = functools.partial(
                slots.decode, self.sampler.config, rows=rows, steps=self.steps, stop_ids=self.stop_tuple,
                pad_id=self.tokenizer.pad_id, top_k=self._top(top), impl=self.prng_impl,
            )  # fmt: skip
            self._decode[key] = jax.jit(fn, donate_argnums=(1,))
        return self._decode[key]

    def _top(self, top: bool) -> int:
        return min(self.config.max_logprobs, self.vocab_size) if top else 0

    # -- the slots ------------------------------------------------------------------------------------------
    @property
    def state(self) -> slots.SlotState:
        if self._state is None:
            self.reset()
        assert self._state is not None
        return self._state

    def reset(self) -> None:
        """Empties every slot (a fresh cache): at start-up, and after a call failed with the state donated."""
        self._state = None  # the old cache's memory is free before the new one is allocated
        self._state = slots.init_slots(self.sampler.config, self.slots, self.max_len, self.prng_impl)

    def rows_bucket(self, rows: int) -> int:
        """The compiled row count for `rows` rows (prefill) or a prefix of `rows` slots (decode)."""
        return bucket(rows, self.config.batch_buckets)

    def admit(self, rows: Sequence[NewRow]) -> slots.Emitted:
        """Prefills rows of one prompt bucket into their slots; returns their first tokens (device arrays,
        not waited for). Raises (before touching the state) on a prompt that cannot be padded."""
        count = self.rows_bucket(len(rows))
        if count > self.config.batch_buckets[-1]:
            raise ValueError(f"{len(rows)} rows exceed the largest batch bucket; admit fewer at once")
        prompt_len = bucket(max(len(r.prompt) for r in rows), self.config.prompt_buckets)
        ids, mask = left_pad([r.prompt for r in rows], count, self.tokenizer.pad_id, prompt_len)
        filler = count - len(rows)  # rows of the bucket with no prompt: their writes are dropped
        words = np.asarray([key_words(r.seed, r.choice) for r in rows] + [(0, 0, 0)] * filler, np.uint32)
        row_params = RowParams(
            temperature=np.asarray([r.temperature for r in rows] + [0.0] * filler, np.float32),
            top_k=np.asarray([min(r.top_k, self.vocab_size) for r in rows] + [0] * filler, np.int32),
            top_p=np.asarray([r.top_p for r in rows] + [1.0] * filler, np.float32),
        )
        limits = np.asarray([r.max_tokens for r in rows] + [1] * filler, np.int32)
        where = np.asarray([r.slot for r in rows] + [self.slots] * filler, np.int32)
        fn = self._admit_fn(count, prompt_len)
        self._state, first = fn(
            self.sampler._stream_arrays(), self.state, ids, mask, words, row_params, limits, where
        )
        return first

    def decode(self, live: np.ndarray, rows: int, top: bool) -> slots.Emitted:
        """Advances slots 0..rows-1 (rows: a batch bucket) by up to `steps` tokens; `live` [S] marks the
        slots whose rows the scheduler still reads. With `top`, every slot is decoded (see the module doc).
        Returns the emissions (device arrays, not waited for)."""
        fn = self._decode_fn(self.slots if top else rows, top)
        self._state, out = fn(self.sampler._stream_arrays(), self.state, jnp.asarray(live))
        return out

    def broken(self) -> bool:
        """Whether a failed call left the state unusable (its buffers were donated to the call)."""
        return self._state is not None and any(x.is_deleted() for x in jax.tree.leaves(self._state))

    # -- start-up -------------------------------------------------------------------------------------------
    def warmup(self, *, on_shape: Any = None) -> float:
        """Compiles (or loads from the persistent cache) every prefill and decode shape, then empties the
        slots; returns the seconds it took. The prompts are real text, so the compiled calls are the ones
        requests use (nothing about a shape depends on the values)."""
        t0 = time.perf_counter()
        text = self.encode_text("Count from one to a thousand: one, two, three, four, five,")
        limit = self.config.max_tokens_limit
        for shape in self.compiled_shapes:
            t = time.perf_counter()
            if shape[0] == "prefill":
                _, count, prompt_len = shape
                prompt = list(np.resize(np.asarray(text, np.int32), prompt_len))
                rows = [NewRow(prompt, i % self.slots, 0, i, 1.0, 0, 1.0, limit) for i in range(count)]
                jax.block_until_ready(self.admit(rows))
            else:
                _, count, _, top = shape
                live = np.zeros(self.slots, bool)
                live[:count] = True
                jax.block_until_ready(self.decode(live, count, bool(top)))
            log.info("compiled %s in %.1f s", shape, time.perf_counter() - t)
            if on_shape is not None:
                on_shape(*shape)
        t = time.perf_counter()
        self.scorer.warmup()  # prompt log-probs (`echo`), scored before a job is admitted
        log.info(
            "compiled %d prompt-scoring shapes in %.1f s", self.scorer.compile_count, time.perf_counter() - t
        )
        self.reset()
        return time.perf_counter() - t0
