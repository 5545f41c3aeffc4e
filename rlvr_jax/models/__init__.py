"""Flax (NNX) decoder models, their configuration and tokenizers."""

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.decoder import Decoder, KVCache, abstract_model, init_model, positions_from_mask

__all__ = ["Decoder", "KVCache", "ModelConfig", "abstract_model", "init_model", "positions_from_mask"]
