"""Evaluation: generate with the fast sampler, score with the task's reward, summarise."""

from rlvr_jax.evaluation.generate_and_score import ScoredSample, generate_and_score, summarize

__all__ = ["ScoredSample", "generate_and_score", "summarize"]
