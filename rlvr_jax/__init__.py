"""rlvr-jax: reinforcement learning from verifiable rewards on sharded JAX/Flax models."""

__version__ = "0.1.0"
