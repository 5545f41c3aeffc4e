"""Model weights in and out: Hugging Face hub ids and directories (safetensors) and GGUF files.

Not to be confused with `rlvr_jax.checkpointing`, the orbax training-state checkpoints a run resumes from.
"""

from rlvr_jax.weights.hf import CheckpointError
from rlvr_jax.weights.loader import (
    LoadedModel,
    export_hf,
    load_model,
    load_policy,
    load_tokenizer,
    source_kind,
)
from rlvr_jax.weights.peft_export import export_peft

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "export_hf",
    "export_peft",
    "load_model",
    "load_policy",
    "load_tokenizer",
    "source_kind",
]
