"""What an exported artifact promises its callers: shapes, names, dtypes, and the manifest that says so.

Both formats (TF SavedModel, jax.export StableHLO) carry the same two functions with the same input and
output names, so a client written against one works against the other. Shapes are static except, by
default, the batch dimension: a serving system batches requests, but every compiled shape is fixed by
the export (prompt length and the number of new tokens), as everywhere else in this framework.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.models.config import ModelConfig

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
SIGNATURES = ("generate", "logits")
MANIFEST = "export_manifest.json"

# Inputs of every signature: left-padded token ids and a 0/1 mask (int32, what TF Serving's JSON and
# gRPC clients send most easily).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """The static shapes and targets of an export.

    prompt_len: every prompt is left padded to exactly this many tokens (longer prompts must be cut or
      rejected by the client; the mask marks the real tokens).
    max_new_tokens: the greedy loop's buffer; decoding stops earlier when every row hit a stop token.
    batch: a fixed batch size, or None for a symbolic one (any batch >= 1 runs the same artifact).
    platforms: where the artifact may run; one module is lowered for all of them, so a CPU machine can
      export what a CUDA TF Serving runs.
    signatures: which functions to export ("generate": greedy tokens, "logits": full-sequence logits).
    """

    prompt_len: int = 128
    max_new_tokens: int = 64
    batch: int | None = None
    platforms: tuple[str, ...] = ("cpu", "cuda")
    signatures: tuple[str, ...] = SIGNATURES

    def validate(self, cfg: ModelConfig) -> None:
        """Raises ValueError (with what to change) for a spec this model cannot be exported with."""
        if self.prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {self.prompt_len}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be >= 1 (or omitted for any batch size), got {self.batch}")
        if (
            cfg.positional == "learned"
            and self.prompt_len + self.max_new_tokens > cfg.max_position_embeddings
        ):
            raise ValueError(
                f"prompt_len ({self.prompt_len}) + max_new_tokens ({self.max_new_tokens}) exceed the "
                f"model's {cfg.max_position_embeddings} learned positions; lower one of them"
            )
        unknown = [p for p in self.platforms if p not in PLATFORMS]
        if not self.platforms or unknown:
            raise ValueError(f"platforms must be a non-empty subset of {PLATFORMS}, got {self.platforms}")
        bad = [s for s in self.signatures if s not in SIGNATURES]
        if not self.signatures or bad:
            raise ValueError(f"signatures must be a non-empty subset of {SIGNATURES}, got {self.signatures}")


def signature_schema(spec: ExportSpec, cfg: ModelConfig) -> dict[str, Any]:
    """Names, dtypes and shapes (None = any size) of each exported signature's inputs and outputs."""
    B, P, N, V = spec.batch, spec.prompt_len, spec.max_new_tokens, cfg.vocab_size
    inputs = {
        INPUT_IDS: {"dtype": "int32", "shape": [B, P], "doc": "token ids, left padded"},
        ATTENTION_MASK: {"dtype": "int32", "shape": [B, P], "doc": "1 for real tokens, 0 for padding"},
    }
    outputs = {
        "generate": {
            "tokens": {"dtype": "int32", "shape": [B, N], "doc": "greedy tokens, pad id after a stop"},
            "logprobs": {"dtype": "float32", "shape": [B, N], "doc": "log-prob of each token, 0 on padding"},
            "lengths": {"dtype": "int32", "shape": [B], "doc": "generated tokens incl. the stop token"},
            "finished": {"dtype": "bool", "shape": [B], "doc": "ended on a stop token"},
        },
        "logits": {
            "logits": {"dtype": "float32", "shape": [B, P, V], "doc": "next-token logits at each position"},
        },
    }
    return {name: {"inputs": inputs, "outputs": outputs[name]} for name in spec.signatures}


def write_manifest(
    out_dir: Path,
    *,
    fmt: str,
    spec: ExportSpec,
    cfg: ModelConfig,
    pad_id: int,
    stop_ids: Sequence[int],
    source: str | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes export_manifest.json: everything a client needs to build valid requests."""
    import jax

    manifest = {
        "format": fmt,
        "source": source,
        "family": cfg.family,
        "compute_dtype": str(jax.numpy.dtype(cfg.compute_dtype)),
        "prompt_len": spec.prompt_len,
        "max_new_tokens": spec.max_new_tokens,
        "batch": spec.batch,
        "platforms": list(spec.platforms),
        "pad_id": int(pad_id),
        "stop_ids": [int(i) for i in stop_ids],
        "vocab_size": cfg.vocab_size,
        "signatures": signature_schema(spec, cfg),
        "jax_version": jax.__version__,
        # What an XlaCallModule (TF, TF Serving) must support; jax2tf and jax.export share this default.
        "calling_convention_version": jax.config.jax_export_calling_convention_version,
        **(extra or {}),
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    """Reads an export manifest, with a clear error when the directory is not an export."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {path.parent} is not a directory written by scripts/export.py"
        )
    return json.loads(path.read_text())
