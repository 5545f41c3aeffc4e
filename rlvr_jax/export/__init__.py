"""Export a model for deployment: a TF SavedModel (jax2tf, TF Serving) or a jax.export StableHLO artifact.

Both carry the same signatures ("generate": greedy tokens, "logits") over left-padded int32
input_ids/attention_mask of a fixed prompt length; see spec.py for the contract and deploy/README.md
for serving. TensorFlow is imported only when a SavedModel is written or loaded.
"""

from rlvr_jax.export.artifact import FORMATS, export_artifact, generate_runner
from rlvr_jax.export.saved_model import LoadedSavedModel, export_saved_model
from rlvr_jax.export.spec import ExportSpec, read_manifest, signature_schema
from rlvr_jax.export.stablehlo import StableHLOModel, export_stablehlo, load_stablehlo

__all__ = [
    "FORMATS",
    "ExportSpec",
    "LoadedSavedModel",
    "StableHLOModel",
    "export_artifact",
    "export_saved_model",
    "export_stablehlo",
    "generate_runner",
    "load_stablehlo",
    "read_manifest",
    "signature_schema",
]
