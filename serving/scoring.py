"""Prompt log-probs for the server's `echo` + `logprobs`: one forward pass per batch of prompts.

Any engine (the dynamic batcher's, or a slot engine) calls `PromptScorer.score` for the jobs that ask
(`Job.prompt_logprobs`) and puts the result in their `RowState.prompt_logprobs` / `prompt_top_logprobs`.
Shapes are bucketed like the sampler's (rows over the batch buckets, length over the prompt buckets) and
every one is compiled by `warmup` before the server is ready, so no request waits for a compilation.
The alternatives are always computed for the server's `max_logprobs` (one compiled variant per shape);
each job keeps the first k it asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from rlvr_jax.generate.sampler import bucket
from rlvr_jax.generate.scoring import sequence_logprobs
from rlvr_jax.serving.batcher import TopLogprobs

# One prompt's scores: a log-prob per token (None for the first, which has no context) and its
# alternatives (() for the first).
PromptScores = tuple[tuple[float | None, ...], tuple[TopLogprobs, ...]]


class PromptScorer:
    """Scores prompts with the sampler's current parameters (`sampler.params`, so weight updates count)."""

    def __init__(
        self, sampler: Any, *, batch_buckets: Sequence[int], prompt_buckets: Sequence[int], top_logprobs: int
    ):
        self.sampler = sampler
        self.batch_buckets = tuple(batch_buckets)
        self.prompt_buckets = tuple(prompt_buckets)
        self.top_logprobs = top_logprobs
        self._fn = jax.jit(functools.partial(sequence_logprobs, sampler.graphdef, top_logprobs=top_logprobs))
        self.shapes: set[tuple[int, int]] = set()  # compiled (rows, length) shapes

    @property
    def compile_count(self) -> int:
        return len(self.shapes)

    def score(self, prompts: Sequence[Sequence[int]]) -> list[PromptScores]:
        """Each prompt's scores, in order (a prompt repeated for n choices is scored once)."""
        unique = list(dict.fromkeys(tuple(int(t) for t in p) for p in prompts))
        rows = bucket(len(unique), self.batch_buckets)
        length = bucket(max(len(p) for p in unique), self.prompt_buckets)
        ids = np.full((rows, length), self.sampler.tokenizer.pad_id, np.int32)
        mask = np.zeros((rows, length), bool)
        for r, p in enumerate(unique):
            ids[r, length - len(p) :] = p
            mask[r, length - len(p) :] = True
        lp, top_ids, top_lps = jax.device_get(self._run(ids, mask))
        scores: dict[tuple[int, ...], PromptScores] = {}
        for r, p in enumerate(unique):
            start = length - len(p) + 1  # the first token has no context
            logprobs = (None, *(float(x) for x in lp[r, start:].tolist()))
            tops: tuple[TopLogprobs, ...] = ((),) * len(p)
            if self.top_logprobs:
                pairs = zip(top_ids[r, start:].tolist(), top_lps[r, start:].tolist(), strict=True)
                tops = ((), *(tuple(zip(i, v, strict=True)) for i, v in pairs))
            scores[p] = (logprobs, tops)
        return [scores[tuple(int(t) for t in p)] for p in prompts]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> Any:
        self.shapes.add(ids.shape)
        return self._fn(self.sampler.params, ids, mask)

    def warmup(self) -> None:
        """Compiles (or loads from the persistent cache) every (batch bucket, prompt bucket) shape."""
        pad = self.sampler.tokenizer.pad_id
        for rows in self.batch_buckets:
            for length in self.prompt_buckets:
                ids = np.full((rows, length), pad, np.int32)
                jax.block_until_ready(self._run(ids, np.ones((rows, length), bool)))
