"""The rollout engine: a jitted on-device sampler over the framework's models."""

from rlvr_jax.generate.sampler import (
    Completion,
    GenerateOutput,
    RowParams,
    Sampler,
    SamplingParams,
    generate,
)

__all__ = ["Completion", "GenerateOutput", "RowParams", "Sampler", "SamplingParams", "generate"]
