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


@dataclasses.dataclass
class RewardResult:
    """Per-sample scores (float32 [batch]) and a short human-readable reason for each."""

    scores: np.ndarray
    reasons: list[str]

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float32)
        if self.scores.ndim != 1 or len(self.reasons) != len(self.scores):
            raise ValueError(f"scores {self.scores.shape} and {len(self.reasons)} reasons do not match")


class RewardFn(Protocol):
    def __call__(
        self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], **options: Any
    ) -> RewardResult: ...


_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: makes a reward function available to configs by `name`."""

    def wrap(fn: RewardFn) -> RewardFn:
        old = _REGISTRY.get(name)
        if old is not None and old is not fn and not same_definition(old, fn):
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def same_definition(old: Callable[..., Any], new: Callable[..., Any]) -> bool:
    """The same function defined again (a re-run notebook cell, a reloaded module): the new one replaces
    the old. Two different functions claiming one name is still an error."""
    return (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
        getattr(new, "__module__", None),
        getattr(new, "__qualname__", None),
    )


def get_reward(name: str) -> RewardFn:
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name]


def registered_rewards() -> list[str]:
    return sorted(_REGISTRY)
