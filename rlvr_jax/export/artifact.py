"""One entry point over both formats, for the command line and for code that does not care which."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from rlvr_jax.export.spec import ExportSpec
from rlvr_jax.export.verify import GenerateFn
from rlvr_jax.models.decoder import Decoder

FORMATS = ("saved_model", "stablehlo")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {FORMATS}")


def check_dependencies(fmt: str) -> None:
    """Fails before any model is loaded when the format's runtime is missing (TensorFlow for SavedModel)."""
    check_format(fmt)
    if fmt == "saved_model" and importlib.util.find_spec("tensorflow") is None:
        raise ValueError(
            "--format saved_model needs TensorFlow, which is not installed: pip install -e '.[export]' "
            "(the tested pin), or export --format stablehlo, which needs only JAX"
        )


def export_artifact(
    model: Decoder,
    fmt: str,
    out_dir: str | os.PathLike,
    spec: ExportSpec,
    *,
    stop_ids: tuple[int, ...],
    pad_id: int,
    tokenizer: Any = None,
    source: str | None = None,
) -> Path:
    """Writes a "saved_model" or "stablehlo" export of `model` to `out_dir`."""
    check_format(fmt)
    kwargs = {"stop_ids": stop_ids, "pad_id": pad_id, "tokenizer": tokenizer, "source": source}
    if fmt == "saved_model":
        from rlvr_jax.export.saved_model import export_saved_model

        return export_saved_model(model, out_dir, spec, **kwargs)
    from rlvr_jax.export.stablehlo import export_stablehlo

    return export_stablehlo(model, out_dir, spec, **kwargs)


def generate_runner(fmt: str, out_dir: str | os.PathLike) -> GenerateFn:
    """The export's "generate" signature, loaded the way a deployment loads it (TF, or jax.export)."""
    check_format(fmt)
    if fmt == "saved_model":
        from rlvr_jax.export.saved_model import LoadedSavedModel

        loaded = LoadedSavedModel(out_dir)
        return lambda ids, mask: loaded("generate", ids, mask)
    from rlvr_jax.export.stablehlo import load_stablehlo

    artifact = load_stablehlo(out_dir)
    return artifact.generate
