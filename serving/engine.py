"""The model side of the server: jobs in, per-row token states out, through the project's `Sampler`.

This is the static engine (`--engine static`): a batch runs from prefill to its last token, and a request
that arrives meanwhile waits for it. The default, continuous batching over decode slots, is
`serving.slot_engine.ContinuousEngine`, which shares this class's checks, prompts and keys.

One batch becomes one `Sampler.stream_ids` call on fixed shapes: rows padded up to a batch bucket with
empty prompts (which generate nothing), prompts left-padded into a prompt bucket, the new-token budget
rounded up to a new-token bucket. Every combination is compiled by `warmup` before the server says it is
ready, so no request ever waits for a compilation. Each row carries its own temperature / top-p / top-k
(`RowParams`) and its own PRNG key, derived from its request's seed and its choice index only, so requests
with different sampling share a batch and a seeded request gets the same samples whatever shares it.

Log-probs: every row state carries its tokens' log-probs (the sampler's own, see `RowState`); the sampler
always computes the `max_logprobs` best alternatives per step (one compiled variant: a request's
`top_logprobs` never meets an uncompiled shape) and each job keeps the first k it asked for. Jobs that ask
for their prompt's log-probs (`echo`) are scored first by one forward pass (`serving.scoring`); a job with
max_tokens 0 is only scored, and takes no decoding row.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.generate.sampler import GenerateOutput, RowParams, Sampler, SamplingParams, bucket
from rlvr_jax.generate.slots import keys_from_words
from rlvr_jax.serving.batcher import InvalidJob, Job, RowState, TopLogprobs
from rlvr_jax.serving.config import ServerConfig
from rlvr_jax.serving.scoring import PromptScorer, PromptScores

MAX_TEMPERATURE = 2.0  # OpenAI's range (the request schema says the same)
MAX_TOP_K = 2**31 - 1  # top_k lives in an int32 on the device

log = logging.getLogger(__name__)


class Engine:
    """Owns the sampler and tokenizer; `run` is the batcher's Runner."""

    def __init__(self, sampler: Sampler, config: ServerConfig):
        self.sampler = sampler
        self.tokenizer = sampler.tokenizer
        self.config = config
        self.stop_ids = frozenset(int(i) for i in self.tokenizer.stop_ids)
        self.scorer = PromptScorer(
            sampler, batch_buckets=config.batch_buckets, prompt_buckets=config.prompt_buckets,
            top_logprobs=config.max_logprobs,
        )  # fmt: skip
        model_cfg = sampler.config
        longest = config.prompt_buckets[-1] + config.new_token_buckets[-1]
        if model_cfg.positional == "learned" and longest > model_cfg.max_position_embeddings:
            raise ValueError(
                f"the largest prompt bucket + new-token bucket ({longest}) exceed this model's "
                f"{model_cfg.max_position_embeddings} positions; pass smaller --prompt_buckets / "
                "--new_token_buckets"
            )

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, config: ServerConfig) -> Engine:
        """The engine `config.engine` names: continuous batching over slots, or static batches."""
        sampler = Sampler(
            model, tokenizer, prompt_buckets=config.prompt_buckets, new_token_buckets=config.new_token_buckets
        )
        if config.engine == "continuous":
            from rlvr_jax.serving.slot_engine import ContinuousEngine  # it builds on this module

            return ContinuousEngine(sampler, config)
        return Engine(sampler, config)

    @property
    def compiled_shapes(self) -> list[tuple]:
        """(batch rows, prompt length, new tokens) of every shape `warmup` compiles."""
        return list(self.config.compiled_shapes)

    # -- prompts ---------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation through the model's chat template, ready for the assistant's turn."""
        text = self.tokenizer.format(messages, chat=True)
        return self.tokenizer.encode(text, chat_formatted=True)

    def encode_text(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt (with the tokenizer's usual special tokens, e.g. BOS)."""
        return self.tokenizer.encode(prompt)

    @property
    def vocab_size(self) -> int:
        return int(self.sampler.config.vocab_size)

    @property
    def compile_count(self) -> int:
        """Executables compiled so far: the sampler's and the prompt scorer's."""
        return self.sampler.compile_count + self.scorer.compile_count

    @property
    def context_length(self) -> int:
        """Positions the model was trained for: a prompt plus its completion must fit in them."""
        return int(self.sampler.config.max_position_embeddings)

    # -- batches ---------------------------------------------------------------------------------------------
    def check(self, job: Job) -> None:
        """Raises InvalidJob when this job cannot run here, before it joins a batch (the app checks the same
        limits with friendlier messages; this is the batcher's own guard for every caller)."""
        problem = _job_problem(job, self.config, self.vocab_size, self.context_length)
        if problem:
            raise InvalidJob(problem)

    def run(self, jobs: Sequence[Job]) -> Iterator[list[tuple[RowState, ...]]]:
        """Runs the jobs as one batch, yielding every job's row states after each decoded chunk.

        Prompts are scored first for the jobs that ask; jobs with max_tokens 0 are then done, and the
        others decode together.
        """
        scores = self._prompt_scores(jobs)
        states = [
            _scored_rows(job, s) if job.max_tokens == 0 else () for job, s in zip(jobs, scores, strict=True)
        ]
        decoding = [i for i, job in enumerate(jobs) if job.max_tokens > 0]
        if not decoding:
            yield states
            return
        rows = _Rows([jobs[i] for i in decoding], [scores[i] for i in decoding], self.stop_ids)
        for decoded in self._decode([jobs[i] for i in decoding]):
            for i, job_rows in zip(decoding, rows.states(decoded), strict=True):
                states[i] = job_rows
            yield list(states)

    def _prompt_scores(self, jobs: Sequence[Job]) -> list[list[PromptScores] | None]:
        """Per job, its rows' prompt scores when it asked for them, else None: one forward pass for all."""
        asking = [job for job in jobs if job.prompt_logprobs]
        if not asking:
            return [None] * len(jobs)
        flat = iter(self.scorer.score([p for job in asking for p in job.prompts]))
        return [[next(flat) for _ in job.prompts] if job.prompt_logprobs else None for job in jobs]

    def _decode(self, jobs: Sequence[Job]) -> Iterator[GenerateOutput]:
        """The sampler's cumulative outputs for these jobs' rows, chunk by chunk."""
        prompts = [p for job in jobs for p in job.prompts]
        row_jobs = [job for job in jobs for _ in job.prompts]
        rows = bucket(len(prompts), self.config.batch_buckets)
        if rows > self.config.max_batch:
            raise ValueError(f"{len(prompts)} rows exceed max_batch ({self.config.max_batch})")
        ids, mask = left_pad(prompts, rows, self.tokenizer.pad_id)
        filler = rows - len(prompts)  # empty rows: greedy, unfiltered, and they generate nothing
        row_params = RowParams(
            temperature=jnp.asarray([j.temperature for j in row_jobs] + [0.0] * filler, jnp.float32),
            top_k=jnp.asarray([min(j.top_k, self.vocab_size) for j in row_jobs] + [0] * filler, jnp.int32),
            top_p=jnp.asarray([j.top_p for j in row_jobs] + [1.0] * filler, jnp.float32),
        )
        words = [key_words(job.seed or 0, c) for job in jobs for c in range(job.rows)]
        keys = _row_keys(np.asarray(words + [(0, 0, 0)] * filler, np.uint32), self.sampler.prng_impl)
        params = self._batch_params(max(j.max_tokens for j in jobs))
        stream = self.sampler.stream_ids(
            ids, mask, params, seed=keys, row_params=row_params, chunk_tokens=self.config.stream_chunk_tokens,
            top_logprobs=self.config.max_logprobs,
        )  # fmt: skip
        try:
            yield from stream
        finally:
            stream.close()

    def _batch_params(self, max_new_tokens: int) -> SamplingParams:
        """The batch-wide SamplingParams; per-row temperature / top-p / top-k come from RowParams.

        top_k here only selects the compiled variant: the sampler builds the top-k/top-p filtering step
        when the batch-wide top_k > 0 (rows whose own top_k is 0 and top_p 1 are not filtered by it). One
        variant for every batch halves the start-up compilations and keeps a top_p request from ever
        meeting an uncompiled shape.
        """
        return SamplingParams(
            temperature=1.0, top_p=1.0, top_k=self.vocab_size, max_new_tokens=max_new_tokens
        )

    def warmup(self, *, on_shape: Any = None) -> float:
        """Compiles (or loads from the persistent cache) every bucket shape; returns the seconds it took.

        Each shape runs the prefill and one decode chunk: rows sample at temperature 1 from a long
        prompt, and a shape is retried with another seed in the (unlikely) case that every row stopped on
        its first token, which would leave the decode chunk uncompiled.
        """
        t0 = time.perf_counter()
        text = self.encode_text("Count from one to a thousand: one, two, three, four, five,")
        for rows, prompt_len, new_tokens in self.config.compiled_shapes:
            t = time.perf_counter()
            ids = np.resize(np.asarray(text, np.int32), (rows, prompt_len))
            mask = np.ones((rows, prompt_len), bool)
            row_params = RowParams.broadcast(SamplingParams(temperature=1.0), rows)
            for seed in range(8):
                words = np.asarray([key_words(seed, c) for c in range(rows)], np.uint32)
                keys = _row_keys(words, self.sampler.prng_impl)
                stream = self.sampler.stream_ids(
                    ids, mask, self._batch_params(new_tokens), seed=keys, row_params=row_params,
                    chunk_tokens=self.config.stream_chunk_tokens, top_logprobs=self.config.max_logprobs,
                )  # fmt: skip
                chunks = 0
                for _ in stream:
                    chunks += 1
                    if chunks == 2:
                        break  # prefill and one decode chunk: both functions are compiled
                stream.close()
                if chunks == 2:
                    break
            else:
                raise RuntimeError(
                    f"warm-up never reached a decode step for shape {(rows, prompt_len, new_tokens)}"
                )
            log.info(
                "compiled batch %d x prompt %d x new tokens %d in %.1f s", rows, prompt_len, new_tokens,
                time.perf_counter() - t,
            )  # fmt: skip
            if on_shape is not None:
                on_shape(rows, prompt_len, new_tokens)
        t = time.perf_counter()
        self.scorer.warmup()
        log.info(
            "compiled %d prompt-scoring shapes in %.1f s", self.scorer.compile_count, time.perf_counter() - t
        )
        return time.perf_counter() - t0


def _job_problem(job: Job, cfg: ServerConfig, vocab: int, context: int) -> str | None:
    """What is wrong with a job on its own (a limit, a value out of range), or None."""
    least = 0 if job.prompt_logprobs else 1  # 0: score the prompt only
    if not (isinstance(job.max_tokens, int) and least <= job.max_tokens <= cfg.max_tokens_limit):
        only = " (0 only when the prompt is scored)" if not least else ""
        return (
            f"max_tokens must be an integer in {least}..{cfg.max_tokens_limit}{only}, got {job.max_tokens!r}"
        )
    if not (isinstance(job.top_logprobs, int) and 0 <= job.top_logprobs <= cfg.max_logprobs):
        return (
            f"top_logprobs must be an integer in 0..{cfg.max_logprobs} (the server's --max_logprobs), "
            f"got {job.top_logprobs!r}"
        )
    if not (math.isfinite(job.temperature) and 0 <= job.temperature <= MAX_TEMPERATURE):
        return f"temperature must be in 0..{MAX_TEMPERATURE:g}, got {job.temperature!r}"
    if not (math.isfinite(job.top_p) and 0 < job.top_p <= 1):
        return f"top_p must be in (0, 1], got {job.top_p!r}"
    if not (isinstance(job.top_k, int) and 0 <= job.top_k <= MAX_TOP_K):
        return f"top_k must be an integer in 0..{MAX_TOP_K}, got {job.top_k!r}"
    if job.seed is not None and not isinstance(job.seed, int):
        return f"seed must be an integer, got {job.seed!r}"
    for ids in job.prompts:
        if not 1 <= len(ids) <= cfg.max_prompt_tokens:
            return f"a prompt has {len(ids)} tokens; it needs 1 to {cfg.max_prompt_tokens}"
        if len(ids) + job.max_tokens > context:
            return f"a prompt of {len(ids)} tokens + {job.max_tokens} new ones exceed the context ({context})"
        if not all(isinstance(t, int | np.integer) and 0 <= t < vocab for t in ids):
            return f"a prompt holds a token id outside the vocabulary (0..{vocab - 1})"
    return None


def key_words(seed: int, choice: int) -> tuple[int, int, int]:
    """A row's key material: its request's seed as two 32-bit words (any integer, taken modulo 2**64: JAX
    would silently keep only 32 bits of a larger seed) and its choice index within the request."""
    u = seed % 2**64
    return u & 0xFFFFFFFF, u >> 32, choice


# [rows, 3] key material -> [rows] typed keys (see `keys_from_words`: a row's key is its own).
_row_keys = jax.jit(keys_from_words, static_argnames="impl")


def left_pad(
    prompts: Sequence[Sequence[int]], rows: int, pad_id: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[rows, width] ids and mask (width: the longest prompt unless given), prompts right-aligned; rows
    past the prompts stay empty."""
    width = width or max(len(p) for p in prompts)
    ids = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = p
        mask[r, width - len(p) :] = True
    return ids, mask


def _scored_rows(job: Job, scores: list[PromptScores] | None) -> tuple[RowState, ...]:
    """A max_tokens-0 job's rows: nothing generated, done, with their prompts' scores."""
    return tuple(
        RowState(token_ids=(), stop_token=False, done=True, **_prompt_fields(job, s))
        for s in (scores or [None] * job.rows)
    )


def _prompt_fields(job: Job, scores: PromptScores | None) -> dict[str, tuple]:
    """RowState's prompt fields for one row: its scores, alternatives cut to the job's k."""
    if scores is None:
        return {}
    logprobs, tops = scores
    return {"prompt_logprobs": logprobs, "prompt_top_logprobs": tuple(t[: job.top_logprobs] for t in tops)}


class _Rows:
    """Turns the sampler's cumulative outputs into row states, each row cut to its own job's max_tokens.

    The log-prob tuples grow with the rows: what earlier chunks converted is kept, so each chunk converts
    only its new positions (a row's earlier tokens never change).
    """

    def __init__(
        self, jobs: Sequence[Job], scores: Sequence[list[PromptScores] | None], stop_ids: frozenset[int]
    ):
        self.jobs, self.stop_ids = list(jobs), stop_ids
        self.prompt = [
            _prompt_fields(job, s)
            for job, job_scores in zip(jobs, scores, strict=True)
            for s in (job_scores or [None] * job.rows)
        ]
        rows = len(self.prompt)
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]
        self.tops: list[list[TopLogprobs]] = [[] for _ in range(rows)]

    def states(self, out: GenerateOutput) -> list[tuple[RowState, ...]]:
        tokens, lengths, logprobs = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logprobs)
        states: list[tuple[RowState, ...]] = []
        r = 0
        for job in self.jobs:
            job_rows = []
            for _ in job.prompts:
                n = min(int(lengths[r]), job.max_tokens)
                ids = tuple(tokens[r, :n].tolist())
                have = len(self.logprobs[r])
                if n > have:
                    self.logprobs[r].extend(logprobs[r, have:n].tolist())
                    if job.top_logprobs:
                        k = job.top_logprobs
                        top_ids = np.asarray(out.top_ids[r, have:n, :k]).tolist()
                        top_lps = np.asarray(out.top_logprobs[r, have:n, :k]).tolist()
                        self.tops[r].extend(
                            tuple(zip(i, v, strict=True)) for i, v in zip(top_ids, top_lps, strict=True)
                        )
                stop_token = bool(ids) and ids[-1] in self.stop_ids
                job_rows.append(
                    RowState(
                        token_ids=ids,
                        stop_token=stop_token,
                        done=stop_token or n >= job.max_tokens,
                        logprobs=tuple(self.logprobs[r]),
                        top_logprobs=tuple(self.tops[r]),
                        **self.prompt[r],
                    )
                )
                r += 1
            states.append(tuple(job_rows))
        return states
