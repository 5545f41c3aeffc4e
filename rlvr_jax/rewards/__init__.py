"""Verifiable rewards, registered by name (see `base.py` for the interface), and plain functions as
rewards (`callables.py`: this package's signature or TRL's / Tunix's, alone or in weighted lists)."""

from rlvr_jax.rewards import code, math_answers, qa, shaping  # noqa: F401  (registration)
from rlvr_jax.rewards.base import RewardResult, get_reward, register_reward, registered_rewards
from rlvr_jax.rewards.callables import RewardSpec, TRLReward, set_reward, trl_reward

__all__ = [
    "RewardResult",
    "RewardSpec",
    "TRLReward",
    "get_reward",
    "register_reward",
    "registered_rewards",
    "set_reward",
    "trl_reward",
]
