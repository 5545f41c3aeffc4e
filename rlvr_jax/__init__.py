"""rlvr-jax: reinforcement learning from verifiable rewards on sharded JAX/Flax models.

`from rlvr_jax import GRPOTrainer` is the Python entry point (`rlvr_jax.trainer.grpo_trainer`); it is
imported on first use, so `import rlvr_jax` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["GRPOTrainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GRPOTrainer":
        from rlvr_jax.trainer.grpo_trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(f"module 'rlvr_jax' has no attribute {name!r}")
