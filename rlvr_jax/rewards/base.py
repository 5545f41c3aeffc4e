"""The reward interface: a registry of named, batch-vectorised reward functions.

A reward function scores a batch of completions against the task fields of their samples and says why:
`fn(completions, samples, **options) -> RewardResult`. Rewards are host-side Python (they parse text and
run programs), so they take and return plain lists / numpy arrays, never device arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from rlvr_jax.registry import Registry


@dataclasses.dataclass
class RewardResult:
    """Per-sample scores (float32 [batch]) and a short human-readable reason for each.

    variants: other verdicts on the same completions that the reward computed alongside, by name (the code
    rewards' `report_strict=True` gives "strict": the whole code block's verdicts next to the extracted
    solution's). An evaluation reports each next to the reward (`reward_strict`, `accuracy_strict`).
    """

    scores: np.ndarray
    reasons: list[str]
    variants: dict[str, RewardResult] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float32)
        if self.scores.ndim != 1 or len(self.reasons) != len(self.scores):
            raise ValueError(f"scores {self.scores.shape} and {len(self.reasons)} reasons do not match")


class RewardFn(Protocol):
    def __call__(
        self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], **options: Any
    ) -> RewardResult: ...


REWARDS: Registry[RewardFn] = Registry("reward")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: makes a reward function available to configs by `name` (see `rlvr_jax.registry`)."""
    return REWARDS.decorator(name)


def get_reward(name: str) -> RewardFn:
    return REWARDS.get(name)


def registered_rewards() -> list[str]:
    return REWARDS.names()
