"""Evaluation: generate with the fast sampler, score with the task's reward, summarise."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlvr_jax.evaluation.generate_and_score import ScoredSample, generate_and_score, summarize

__all__ = ["ScoredSample", "generate_and_score", "summarize"]


def __getattr__(name: str):
    # Imported on first use: scoring and comparing (scripts/score.py, compare.py) need no JAX.
    if name in __all__:
        return getattr(importlib.import_module("rlvr_jax.evaluation.generate_and_score"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
