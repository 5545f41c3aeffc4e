"""Generate completions for task samples and score them: the evaluation both training and `evaluate.py` use.

One function so that the curves a training run logs and the numbers a separate evaluation reports are
computed the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlvr_jax.data.base import Sample, Task
from rlvr_jax.evaluation.metrics import (
    EVAL_REWARD_OPTIONS,
    GROUP_FIELDS,
    PASS_THRESHOLD,
    VARIANTS,
    eval_metrics,
    flat_summary,
)
from rlvr_jax.generate.sampler import Sampler, SamplingParams, bucket
from rlvr_jax.rewards.base import get_reward


@dataclasses.dataclass
class ScoredSample:
    """One completion and its score: a row of samples.jsonl."""

    id: str
    sample_index: int  # which draw of this prompt (0 .. num_samples-1)
    completion: str
    reward: float
    reason: str
    num_tokens: int
    finished: bool
    prompt: str = ""  # the task's prompt (before any chat template)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. level, extra scores

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        extra = row.pop("extra")
        return {**row, "passed": self.reward >= PASS_THRESHOLD, **extra}


def _prompt_texts(tokenizer: Any, task: Task, samples: Sequence[Sample], chat: bool) -> list[str]:
    return [
        tokenizer.format(s["prompt"], chat=chat, system=task.system_prompt if chat else None) for s in samples
    ]


def prompt_lengths(sampler: Sampler, task: Task, samples: Sequence[Sample], chat: bool) -> list[int]:
    """Each prompt's token count as `encode_prompts` tokenises it (template and system prompt included):
    what decides the prompt bucket (`rlvr_jax.trainer.warmup` compiles the buckets these reach)."""
    tokenizer = sampler.tokenizer
    texts = _prompt_texts(tokenizer, task, samples, chat)
    return [len(tokenizer.encode(t, chat_formatted=chat)) for t in texts]


def encode_prompts(sampler: Sampler, task: Task, samples: Sequence[Sample], chat: bool) -> tuple[Any, Any]:
    """Formats (chat template + the task's system prompt) and tokenises, padded to a prompt bucket."""
    tokenizer = sampler.tokenizer
    texts = _prompt_texts(tokenizer, task, samples, chat)
    length = bucket(max(len(tokenizer.encode(t, chat_formatted=chat)) for t in texts), sampler.prompt_buckets)
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
    extra_rewards: Sequence[str] = (),
    on_batch: Callable[[int, list[ScoredSample]], None] | None = None,
) -> list[ScoredSample]:
    """Samples `num_samples` completions per item (in batches) and scores each with the task's reward.

    extra_rewards: other registered rewards to score every completion with as well (stored in `extra` under
    their names, e.g. `qa_em` next to a `qa_f1` task reward). on_batch(items done, scored so far): progress.
    A code reward also gives its strict verdicts (`EVAL_REWARD_OPTIONS`): each row then holds
    reward_strict, passed_strict and reason_strict next to its reward, passed and reason.
    """
    reward_name = reward or task.reward
    reward_fn = get_reward(reward_name)
    reward_options = {**EVAL_REWARD_OPTIONS.get(reward_name, {}), **(reward_options or {})}
    extra_fns = {name: get_reward(name) for name in extra_rewards}
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
        repeated = [
            {**chunk[r // num_samples], "completion_length": metas[r][0], "finished": metas[r][1]}
            for r in range(len(texts))
        ]  # token counts for the length rewards; whether the budget cut the completion off
        scored = reward_fn(texts, repeated, **reward_options)
        extra_scores = {name: fn(texts, repeated).scores for name, fn in extra_fns.items()}
        for r, (text, (n, fin)) in enumerate(zip(texts, metas, strict=True)):
            extra = {f: repeated[r][f] for f in GROUP_FIELDS if repeated[r].get(f) is not None}
            extra.update({name: float(scores[r]) for name, scores in extra_scores.items()})
            for name in VARIANTS:
                if name in scored.variants:
                    variant = scored.variants[name]
                    value = float(variant.scores[r])
                    extra |= {f"reward_{name}": value, f"passed_{name}": value >= PASS_THRESHOLD}
                    extra[f"reason_{name}"] = variant.reasons[r]
            out.append(
                ScoredSample(
                    id=str(repeated[r]["id"]),
                    sample_index=r % num_samples,
                    completion=text,
                    reward=float(scored.scores[r]),
                    reason=scored.reasons[r],
                    num_tokens=n,
                    finished=fin,
                    prompt=_prompt_text(repeated[r]["prompt"]),
                    extra=extra,
                )
            )
        if on_batch is not None:
            on_batch(min(start + per_batch, len(samples)), out)
    return out


def _prompt_text(prompt: Any) -> str:
    """The prompt as text for reading: a string, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1] if users else prompt)


def summarize(scored: Sequence[ScoredSample]) -> dict[str, float]:
    """The scalars a training run logs per evaluation: accuracy (and its 95% interval), reward, lengths."""
    if not scored:
        return {"reward": float("nan"), "accuracy": float("nan"), "n": 0}
    return flat_summary(eval_metrics([s.to_row() for s in scored]))
