"""Checkpoint import/export: Hugging Face hub ids and directories (safetensors) and GGUF files."""

from rlvr_jax.checkpoints.hf import CheckpointError
from rlvr_jax.checkpoints.loader import LoadedModel, export_hf, load_model, source_kind

__all__ = ["CheckpointError", "LoadedModel", "export_hf", "load_model", "source_kind"]
