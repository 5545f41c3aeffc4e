"""Generate completions for task samples and score them: the evaluation both training and `evaluate.py` use.

One function so that the curves a training run logs and the numbers a separate evaluation reports are
computed the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlvr_jax.data.base import Sample, Task
from rlvr_jax.generate.sampler import Sampler, SamplingParams, bucket
from rlvr_jax.rewards.base import get_reward

# A completion "passes" when its reward reaches this (1.0 for exact-match style rewards).
PASS_THRESHOLD = 0.999


@dataclasses.dataclass
class ScoredSample:
    id: str
    sample_index: int  # which draw of this prompt (0 .. num_samples-1)
    completion: str
    reward: float
    reason: str
    num_tokens: int
    finished: bool


def encode_prompts(sampler: Sampler, task: Task, samples: Sequence[Sample], chat: bool) -> tuple[Any, Any]:
    """Formats (chat template + the task's system prompt) and tokenises, padded to a prompt bucket."""
    tokenizer = sampler.tokenizer
    texts = [
        tokenizer.format(s["prompt"], chat=chat, system=task.system_prompt if chat else None) for s in samples
    ]
    rows = [tokenizer.encode(t, chat_formatted=chat) for t in texts]
    length = bucket(max(len(r) for r in rows), sampler.prompt_buckets)
    return tokenizer.encode_batch(texts, chat_formatted=chat, length=length)


def generate_and_score(
    sampler: Sampler,
    task: Task,
    samples: Sequence[Sample],
    params: SamplingParams,
    *,
    chat: bool = True,
    num_samples: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    reward: str | None = None,
    reward_options: dict[str, Any] | None = None,
) -> list[ScoredSample]:
    """Samples `num_samples` completions per item (in batches) and scores each with the task's reward."""
    reward_fn = get_reward(reward or task.reward)
    out: list[ScoredSample] = []
    per_batch = max(1, batch_size // num_samples)
    for start in range(0, len(samples), per_batch):
        chunk = list(samples[start : start + per_batch])
        ids, mask = encode_prompts(sampler, task, chunk, chat)
        result = sampler.generate_ids(ids, mask, params, seed=seed + start, group_size=num_samples)
        tokens, lengths, finished = (np.asarray(x) for x in (result.tokens, result.lengths, result.finished))
        texts, metas = [], []
        for r in range(len(chunk) * num_samples):
            ids_r = sampler.tokenizer.truncate_at_stop(tokens[r, : lengths[r]])
            texts.append(sampler.tokenizer.decode(ids_r))
            metas.append((int(lengths[r]), bool(finished[r])))
        repeated = [s for s in chunk for _ in range(num_samples)]
        scored = reward_fn(texts, repeated, **(reward_options or {}))
        for r, (text, (n, fin)) in enumerate(zip(texts, metas, strict=True)):
            out.append(
                ScoredSample(
                    id=str(repeated[r]["id"]),
                    sample_index=r % num_samples,
                    completion=text,
                    reward=float(scored.scores[r]),
                    reason=scored.reasons[r],
                    num_tokens=n,
                    finished=fin,
                )
            )
    return out


def summarize(scored: Sequence[ScoredSample]) -> dict[str, float]:
    """Mean reward and accuracy (fraction of completions with reward >= PASS_THRESHOLD)."""
    rewards = np.asarray([s.reward for s in scored], np.float64)
    if rewards.size == 0:
        return {"reward": float("nan"), "accuracy": float("nan"), "n": 0}
    return {
        "reward": float(rewards.mean()),
        "accuracy": float((rewards >= PASS_THRESHOLD).mean()),
        "n": int(rewards.size),
        "mean_tokens": float(np.mean([s.num_tokens for s in scored])),
    }
