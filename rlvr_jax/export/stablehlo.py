"""`jax.export` artifacts: serialized StableHLO modules plus the weights they are called with.

Layout of an export directory:
    generate.jaxexport     jax.export.Exported.serialize() of the greedy loop (if exported)
    logits.jaxexport       ... of the full-sequence forward pass (if exported)
    params.safetensors     the flat parameter dict both modules take as their first argument
    export_manifest.json   shapes, names, dtypes, pad and stop ids (see spec.py)
    tokenizer/             the Hugging Face tokenizer files (when a tokenizer was given)

Any program with a compatible jaxlib runs it without this package or the model code:
    exported = jax.export.deserialize(bytearray(open("generate.jaxexport", "rb").read()))
    params = safetensors.numpy.load_file("params.safetensors")
    out = exported.call(params, input_ids, attention_mask)   # out["tokens"]
StableHLO's compatibility guarantees let a newer jaxlib run it (see the JAX export docs on versioning).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.export.functions import flat_params, make_functions
from rlvr_jax.export.spec import (
    ATTENTION_MASK,
    INPUT_IDS,
    MANIFEST,
    ExportSpec,
    read_manifest,
    write_manifest,
)
from rlvr_jax.models.decoder import Decoder

SUFFIX = ".jaxexport"
PARAMS_FILE = "params.safetensors"


def input_specs(spec: ExportSpec) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Shape/dtype of input_ids and attention_mask; a symbolic batch dimension when spec.batch is None."""
    batch: Any = spec.batch if spec.batch is not None else jax.export.symbolic_shape("batch")[0]
    shape = (batch, spec.prompt_len)
    return jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.int32)


def export_functions(
    model: Decoder, spec: ExportSpec, *, stop_ids: Sequence[int], pad_id: int
) -> dict[str, jax.export.Exported]:
    """Lowers each requested signature with `jax.export` for spec.platforms (no files written)."""
    spec.validate(model.cfg)
    params = flat_params(model)
    param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()}
    ids_spec, mask_spec = input_specs(spec)
    fns = make_functions(
        model, spec.signatures, max_new_tokens=spec.max_new_tokens, stop_ids=stop_ids, pad_id=pad_id
    )
    return {
        name: jax.export.export(jax.jit(fn), platforms=spec.platforms)(param_specs, ids_spec, mask_spec)
        for name, fn in fns.items()
    }


def export_stablehlo(
    model: Decoder,
    out_dir: str | os.PathLike,
    spec: ExportSpec,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    tokenizer: Any = None,
    source: str | None = None,
) -> Path:
    """Writes the serialized modules, the weights, the manifest and (optionally) the tokenizer."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    exported = export_functions(model, spec, stop_ids=stop_ids, pad_id=pad_id)
    out.mkdir(parents=True, exist_ok=True)
    for name, exp in exported.items():
        (out / f"{name}{SUFFIX}").write_bytes(exp.serialize())
    weights = {k: np.asarray(jax.device_get(v)) for k, v in flat_params(model).items()}
    save_file(weights, str(out / PARAMS_FILE))
    # safetensors writes through a private temp file (mode 0600); a serving container runs as another,
    # unprivileged user and must be able to read the weights it is given.
    (out / PARAMS_FILE).chmod(0o644)
    version = next(iter(exported.values())).calling_convention_version
    write_manifest(
        out,
        fmt="stablehlo",
        spec=spec,
        cfg=model.cfg,
        pad_id=pad_id,
        stop_ids=stop_ids,
        source=source,
        extra={"calling_convention_version": version},
    )
    if tokenizer is not None:
        tokenizer.save(out / "tokenizer")
    return out


@dataclasses.dataclass
class StableHLOModel:
    """A loaded StableHLO export: call `generate(ids, mask)` or `logits(ids, mask)` with numpy arrays."""

    manifest: dict[str, Any]
    params: dict[str, jax.Array]
    exported: dict[str, jax.export.Exported]

    def __call__(self, signature: str, input_ids: Any, attention_mask: Any) -> dict[str, np.ndarray]:
        if signature not in self.exported:
            raise KeyError(f"this export has no {signature!r} function; it has {sorted(self.exported)}")
        ids = np.asarray(input_ids, np.int32)
        mask = np.asarray(attention_mask, np.int32)
        P, B = self.manifest["prompt_len"], self.manifest["batch"]
        for name, arr in ((INPUT_IDS, ids), (ATTENTION_MASK, mask)):
            if arr.ndim != 2 or arr.shape[1] != P or (B is not None and arr.shape[0] != B):
                want = f"[{B if B is not None else 'batch'}, {P}]"
                raise ValueError(
                    f"{name} has shape {list(arr.shape)}, this export takes {want}: left-pad (or cut) "
                    f"prompts to {P} tokens"
                )
        out = self.exported[signature].call(self.params, ids, mask)
        return {k: np.asarray(v) for k, v in out.items()}

    def generate(self, input_ids: Any, attention_mask: Any) -> dict[str, np.ndarray]:
        return self("generate", input_ids, attention_mask)

    def logits(self, input_ids: Any, attention_mask: Any) -> dict[str, np.ndarray]:
        return self("logits", input_ids, attention_mask)


def load_stablehlo(directory: str | os.PathLike) -> StableHLOModel:
    """Deserializes every module in an export directory and loads its weights."""
    from safetensors.numpy import load_file

    root = Path(directory)
    manifest = read_manifest(root / MANIFEST)
    if manifest.get("format") != "stablehlo":
        raise ValueError(f"{root} holds a {manifest.get('format')!r} export, not a StableHLO one")
    exported = {
        name: jax.export.deserialize(bytearray((root / f"{name}{SUFFIX}").read_bytes()))
        for name in manifest["signatures"]
    }
    params = {k: jnp.asarray(v) for k, v in load_file(str(root / PARAMS_FILE)).items()}
    return StableHLOModel(manifest=manifest, params=params, exported=exported)
