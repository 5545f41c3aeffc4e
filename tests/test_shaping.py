"""Shaping rewards: `format`, `overlong` (DAPO), `length_penalty` and `weighted_sum`."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlvr_jax.rewards import get_reward


def test_format_default_think_answer() -> None:
    completions = [
        "<think>2 + 2 is 4</think>\n<answer>4</answer>",
        "  <think>\nmulti\nline\n</think><answer>4</answer>\n",
        "<answer>4</answer>",  # no reasoning
        "<think>x</think><answer>4</answer> trailing text",
        "4",
        None,
    ]
    result = get_reward("format")(completions, [{}] * len(completions))
    assert result.scores.tolist() == [1, 1, 0, 0, 0, 0]
    assert result.reasons[-1] == "no completion (None)"


def test_format_custom_pattern() -> None:
    samples = [{}] * 3
    completions = ["blah\n#### 12", "#### twelve", "12"]
    search = get_reward("format")(completions, samples, pattern=r"^#### -?\d+$", flags=re.MULTILINE)
    assert search.scores.tolist() == [1, 0, 0]
    by_name = get_reward("format")(completions, samples, pattern=r"^#### -?\d+$", flags="MULTILINE")
    assert by_name.scores.tolist() == [1, 0, 0]
    full = get_reward("format")(completions, samples, pattern=r"\d+", fullmatch=True)
    assert full.scores.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="unknown regex flag"):
        get_reward("format")(completions, samples, flags="DOTALL|NOPE")


def test_overlong_is_dapo_soft_punishment() -> None:
    lengths = [0, 50, 80, 90, 95, 100, 120]
    result = get_reward("overlong")(
        [""] * len(lengths), [{}] * len(lengths), max_len=100, buffer=20, lengths=lengths
    )
    np.testing.assert_allclose(result.scores, [0, 0, 0, -0.5, -0.75, -1, -1])
    assert "length 90" in result.reasons[3]


def test_lengths_from_samples_or_an_error() -> None:
    samples = [{"completion_length": 10}, {"completion_length": 100}]
    result = get_reward("length_penalty")(["a", "b"], samples, max_len=100, free_len=0, scale=0.5)
    np.testing.assert_allclose(result.scores, [-0.05, -0.5])
    with pytest.raises(ValueError, match="completion token lengths"):
        get_reward("overlong")(["a"], [{}], max_len=100, buffer=10)
    with pytest.raises(ValueError, match="max_len and buffer"):
        get_reward("overlong")(["a"], [{}], lengths=[3])
    with pytest.raises(ValueError, match="lengths for"):
        get_reward("overlong")(["a", "b"], [{}, {}], max_len=100, buffer=10, lengths=[3])


def test_weighted_sum_combines_scores_and_reasons() -> None:
    completions = [
        "<think>9*2</think><answer>#### 18</answer>",
        "<think>hm</think><answer>#### 17</answer>",
        "#### 18",
    ]
    samples = [{"answer": "18"}] * 3
    result = get_reward("weighted_sum")(
        completions,
        samples,
        components={"numeric": 1.0, "format": 0.2, "overlong": 0.5},
        component_options={"overlong": {"max_len": 100, "buffer": 20}},
        lengths=[10, 10, 90],  # shared option: only overlong reads it
    )
    np.testing.assert_allclose(result.scores, [1.2, 0.2, 1.0 - 0.25], rtol=1e-6)
    assert result.reasons[0].startswith("numeric(x1)=1: correct: 18")
    assert "format(x0.2)=1" in result.reasons[0] and "overlong(x0.5)=0" in result.reasons[0]


def test_weighted_sum_needs_components() -> None:
    with pytest.raises(ValueError, match="components"):
        get_reward("weighted_sum")(["a"], [{}])
    with pytest.raises(ValueError, match="not in components"):
        get_reward("weighted_sum")(["a"], [{}], components={"format": 1}, component_options={"numeric": {}})
    with pytest.raises(KeyError, match="unknown reward"):
        get_reward("weighted_sum")(["a"], [{}], components={"no_such_reward": 1})
