"""Shaping rewards (format, length, DAPO overlong, weighted sums) and the plumbing all text rewards share.

Every text reward here and in `math_answers` / `qa` scores one completion at a time through `score_batch`,
which turns unusable input (None, bytes that are not UTF-8, lone surrogates, NUL bytes, empty or huge text)
and unexpected exceptions into a 0 score with a reason. A reward is called inside the training loop on
whatever the policy produced, so one pathological completion must never stop a run.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.base import RewardResult, get_reward, register_reward

# Longer completions than this are not parsed: generation is capped at a few thousand tokens, so a longer
# string is a bug upstream, and regexes / sympy on megabytes of text cost seconds per sample.
MAX_CHARS = 200_000

# DeepSeek-R1 style: reasoning in <think>, the final answer in <answer>, nothing around them.
THINK_ANSWER_PATTERN = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"

# (score, reason) for one completion that passed `checked_text`.
ScoreFn = Callable[[str, Mapping[str, Any]], tuple[float, str]]


def checked_text(completion: object, max_chars: int = MAX_CHARS) -> tuple[str | None, str]:
    """`(text, "")` for a completion worth parsing, else `(None, why not)`.

    bytes are decoded as UTF-8 (a sampler may hand raw bytes over); text with lone surrogates cannot be
    encoded, tokenised or logged, so it is rejected rather than silently repaired.
    """
    if completion is None:
        return None, "no completion (None)"
    if isinstance(completion, bytes | bytearray | memoryview):
        try:
            completion = bytes(completion).decode("utf-8")
        except UnicodeDecodeError:
            return None, "binary completion (not valid UTF-8)"
    if not isinstance(completion, str):
        return None, f"completion is a {type(completion).__name__}, not text"
    if len(completion) > max_chars:
        return None, f"completion too long ({len(completion)} chars > {max_chars})"
    try:
        completion.encode("utf-8")
    except UnicodeEncodeError:
        return None, "broken text (lone surrogate, not valid UTF-8)"
    if "\x00" in completion:
        return None, "binary completion (NUL bytes)"
    if not completion.strip():
        return None, "empty completion"
    return completion, ""


def score_batch(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    score_one: ScoreFn,
    max_chars: int = MAX_CHARS,
) -> RewardResult:
    """Applies `score_one` to each (completion, sample) pair, scoring bad input and errors 0 with a reason."""
    if len(completions) != len(samples):
        raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
    scores = np.zeros(len(completions), np.float32)
    reasons: list[str] = []
    for i, (completion, sample) in enumerate(zip(completions, samples, strict=True)):
        text, why = checked_text(completion, max_chars)
        if text is None:
            reasons.append(why)
            continue
        try:
            score, why = score_one(text, sample)
        except Exception as e:  # a reward must not stop training; the reason records what went wrong
            score, why = 0.0, f"reward error: {type(e).__name__}: {str(e)[:200]}"
        scores[i] = score
        reasons.append(why)
    return RewardResult(scores, reasons)


# ---------------------------------------------------------------------------------------------- format


@functools.lru_cache(maxsize=64)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def regex_flags(flags: int | str) -> int:
    """`re` flags from an int or, for configs, names such as "DOTALL|IGNORECASE"."""
    if isinstance(flags, str):
        names = [n.strip().upper() for n in flags.split("|") if n.strip()]
        unknown = [n for n in names if not isinstance(getattr(re, n, None), re.RegexFlag)]
        if unknown:
            raise ValueError(f"unknown regex flag(s) {unknown}")
        return functools.reduce(lambda a, n: a | getattr(re, n), names, 0)
    return int(flags)


@register_reward("format")
def format_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    pattern: str = THINK_ANSWER_PATTERN,
    flags: int | str = re.DOTALL,
    fullmatch: bool = False,
    **_: Any,
) -> RewardResult:
    """1 where the completion matches `pattern` (`re.search`, or `re.fullmatch` when `fullmatch`), else 0.

    The default asks for `<think>...</think><answer>...</answer>` and nothing else; pass any regex to
    reward another layout. `flags` (an int, or names like "DOTALL|MULTILINE") defaults to DOTALL so that
    `.` spans the lines of a reasoning trace.
    """
    regex = _compile(pattern, regex_flags(flags))
    match = regex.fullmatch if fullmatch else regex.search

    def one(text: str, _sample: Mapping[str, Any]) -> tuple[float, str]:
        return (1.0, "format ok") if match(text) else (0.0, "format mismatch")

    return score_batch(completions, samples, one)


# ---------------------------------------------------------------------------------------------- lengths


def completion_lengths(
    completions: Sequence[Any], samples: Sequence[Mapping[str, Any]], lengths: Sequence[int] | None
) -> np.ndarray:
    """Token lengths of the completions: the `lengths` option, else each sample's `completion_length`.

    Lengths are in tokens, which only the sampler knows, so they are never guessed from the text.
    """
    if lengths is None:
        missing = [i for i, s in enumerate(samples) if s.get("completion_length") is None]
        if missing:
            raise ValueError(
                "length rewards need completion token lengths: pass lengths=[...] in the reward options or "
                f"set 'completion_length' on each sample (missing on sample {missing[0]})"
            )
        lengths = [s["completion_length"] for s in samples]
    out = np.asarray(lengths, np.float64)
    if out.shape != (len(completions),):
        raise ValueError(f"{out.size} lengths for {len(completions)} completions")
    if np.any(out < 0) or not np.all(np.isfinite(out)):
        raise ValueError(f"completion lengths must be finite and >= 0, got {out.tolist()}")
    return out


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int) -> np.ndarray:
    """DAPO's soft overlong punishment: 0 up to `max_len - buffer`, linear to -1 at `max_len`, -1 beyond."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong needs 0 < buffer <= max_len, got buffer={buffer}, max_len={max_len}")
    start = max_len - buffer
    return 0.0 - np.clip((lengths - start) / buffer, 0.0, 1.0)  # 0.0 - x: no -0.0 in the logs


def _length_reasons(lengths: np.ndarray, scores: np.ndarray) -> list[str]:
    return [f"length {int(n)}: {s:+.3f}" for n, s in zip(lengths, scores, strict=True)]


@register_reward("overlong")
def overlong_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    max_len: int | None = None,
    buffer: int | None = None,
    lengths: Sequence[int] | None = None,
    **_: Any,
) -> RewardResult:
    """DAPO overlong shaping (penalty in [-1, 0]); `max_len` is the generation cap, `buffer` the soft zone."""
    if max_len is None or buffer is None:
        raise ValueError("the overlong reward needs options max_len and buffer (both in tokens)")
    n = completion_lengths(completions, samples, lengths)
    scores = overlong_penalty(n, int(max_len), int(buffer))
    return RewardResult(scores, _length_reasons(n, scores))


@register_reward("length_penalty")
def length_penalty_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    max_len: int | None = None,
    free_len: int = 0,
    scale: float = 1.0,
    lengths: Sequence[int] | None = None,
    **_: Any,
) -> RewardResult:
    """A linear length cost: 0 up to `free_len` tokens, `-scale` at `max_len` and beyond.

    Combined with a correctness reward through `weighted_sum` it prefers short correct answers.
    """
    if max_len is None or not 0 <= free_len < max_len:
        raise ValueError(f"length_penalty needs 0 <= free_len < max_len, got {free_len=}, {max_len=}")
    n = completion_lengths(completions, samples, lengths)
    scores = 0.0 - float(scale) * np.clip((n - free_len) / (max_len - free_len), 0.0, 1.0)
    return RewardResult(scores, _length_reasons(n, scores))


# ---------------------------------------------------------------------------------------------- sums


@register_reward("weighted_sum")
def weighted_sum_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    components: Mapping[str, float] | None = None,
    component_options: Mapping[str, Mapping[str, Any]] | None = None,
    **shared: Any,
) -> RewardResult:
    """sum_i weight_i * reward_i, e.g. `components={"numeric": 1.0, "format": 0.1}`.

    `component_options={name: {...}}` goes to one component only; any other option (such as `lengths`)
    goes to every component, so each reward takes `**options` and ignores what it does not use.
    """
    if not components:
        raise ValueError("weighted_sum needs components={reward_name: weight, ...}")
    component_options = component_options or {}
    unknown = set(component_options) - set(components)
    if unknown:
        raise ValueError(f"component_options for {sorted(unknown)}, which are not in components")
    total = np.zeros(len(completions), np.float32)
    parts: list[list[str]] = [[] for _ in completions]
    for name, weight in components.items():
        result = get_reward(name)(completions, samples, **{**shared, **component_options.get(name, {})})
        total += np.float32(weight) * result.scores
        for i, (score, reason) in enumerate(zip(result.scores, result.reasons, strict=True)):
            parts[i].append(f"{name}(x{weight:g})={score:g}: {reason}")
    return RewardResult(total, [" | ".join(p) for p in parts])
