"""The `digits_test` task and reward of the training-loop tests (tests/test_trainer.py and the tests that
reuse its tiny config), in a module of their own.

The reward is defined outside the package, so it travels to the trainer's reward workers pickled by
reference (`rlvr_jax.rewards.pool`): each worker imports this module. Kept this light (numpy and the
reward base only) so that a worker starts in a fraction of a second instead of importing jax, flax and
pytest with a test module, which every run's first step used to wait for.
"""

from __future__ import annotations

import numpy as np

from rlvr_jax.data.base import Task, register_task, registered_tasks
from rlvr_jax.rewards.base import RewardResult, register_reward, registered_rewards


def vowel_fraction(completions, samples, **_):
    """Reward: the fraction of characters that are vowels. Random tokens score ~0.2 with spread, so every
    group has a learning signal from the first step, and a policy can push it towards 1."""
    scores = [sum(ch in "aeiouAEIOU" for ch in c) / max(len(c), 1) for c in completions]
    return RewardResult(np.asarray(scores, np.float32), ["vowel fraction"] * len(completions))


def _digits_task(split, path=None, *, chat=True, **_):
    """64 prompts per split; the test split's are other numbers, so that they are held out."""
    first = 1000 if split == "test" else 0
    return [{"id": f"{split}/{i}", "prompt": f"Write some digits ({first + i})."} for i in range(64)]


if "digits_test" not in registered_rewards():
    register_reward("digits_test")(vowel_fraction)
if "digits_test" not in registered_tasks():
    register_task(Task("digits_test", _digits_task, reward="digits_test"))
