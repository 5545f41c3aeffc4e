"""Verifiable rewards, registered by name (see `base.py` for the interface)."""

from rlvr_jax.rewards import code, math_answers, qa, shaping  # noqa: F401  (registration)
from rlvr_jax.rewards.base import RewardResult, get_reward, register_reward, registered_rewards

__all__ = ["RewardResult", "get_reward", "register_reward", "registered_rewards"]
