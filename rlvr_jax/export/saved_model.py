"""TF SavedModel export through jax2tf, for TF Serving (and anything else that loads SavedModels).

jax2tf serializes each function with `jax.export` (StableHLO) and wraps the module in one TF
`XlaCallModule` op; the weights become TF variables that the op reads, so the graph proto stays small and
models above 2 GB export too. TF executes the module with its own XLA, so the SavedModel needs a
TensorFlow whose XlaCallModule supports this JAX's calling convention and StableHLO version (see the
`export` extra in setup.py for the tested pin).

Layout (a TF Serving version directory):
    saved_model.pb, variables/     signatures "generate", "logits" and "serving_default" (= "generate",
                                   or "logits" when only that one is exported)
    assets.extra/export_manifest.json, assets.extra/tokenizer/   (TF Serving ignores assets.extra)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlvr_jax.export.functions import flat_params, make_functions
from rlvr_jax.export.spec import ATTENTION_MASK, INPUT_IDS, ExportSpec, write_manifest
from rlvr_jax.models.decoder import Decoder

EXTRA = "assets.extra"
DEFAULT_SIGNATURE = "serving_default"


def import_tensorflow() -> Any:
    """Imports TensorFlow, or says how to install the tested version."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "the SavedModel export needs TensorFlow: pip install -e '.[export]' (the tested pin); "
            "the StableHLO export (--format stablehlo) needs only JAX"
        ) from e
    return tf


def check_calling_convention(tf: Any) -> None:
    """Fails before any lowering when this TensorFlow cannot run the modules this JAX serializes."""
    from tensorflow.compiler.tf2xla.python import xla as tfxla

    supported = tfxla.call_module_maximum_supported_version()
    needed = jax.config.jax_export_calling_convention_version
    if needed > supported:
        raise ValueError(
            f"TensorFlow {tf.__version__} runs XlaCallModule calling convention <= {supported}, but JAX "
            f"{jax.__version__} serializes version {needed}: install a newer TensorFlow (the `export` extra "
            "pins a tested one) or export --format stablehlo"
        )


def export_saved_model(
    model: Decoder,
    out_dir: str | os.PathLike,
    spec: ExportSpec,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    tokenizer: Any = None,
    source: str | None = None,
) -> Path:
    """Writes a SavedModel whose signatures take int32 input_ids/attention_mask [batch, prompt_len].

    "generate" (also "serving_default", what TF Serving calls when a request names no signature)
    returns greedy tokens; "logits" returns the full-sequence logits.
    """
    tf = import_tensorflow()
    from jax.experimental import jax2tf

    spec.validate(model.cfg)
    check_calling_convention(tf)
    out = Path(out_dir)
    fns = make_functions(
        model, spec.signatures, max_new_tokens=spec.max_new_tokens, stop_ids=stop_ids, pad_id=pad_id
    )
    module = tf.Module()
    # Weights as variables (not constants folded into the graph): trainable=False, TF never updates them.
    module.params = {
        name: tf.Variable(np.asarray(jax.device_get(value)), trainable=False, name=name)
        for name, value in flat_params(model).items()
    }
    batch_poly = "(batch, _)" if spec.batch is None else None
    input_signature = [
        tf.TensorSpec([spec.batch, spec.prompt_len], tf.int32, name=INPUT_IDS),
        tf.TensorSpec([spec.batch, spec.prompt_len], tf.int32, name=ATTENTION_MASK),
    ]
    signatures = {}
    for name, fn in fns.items():
        converted = jax2tf.convert(
            fn,
            with_gradient=False,
            polymorphic_shapes=[None, batch_poly, batch_poly],
            native_serialization_platforms=spec.platforms,
        )

        traced = tf.function(
            _bind_params(converted, module.params), input_signature=input_signature, autograph=False
        )
        setattr(module, name, traced)
        signatures[name] = traced.get_concrete_function()
    # TF Serving calls serving_default when a request names no signature: greedy generation if exported.
    signatures[DEFAULT_SIGNATURE] = signatures["generate" if "generate" in signatures else "logits"]
    tf.saved_model.save(module, str(out), signatures=signatures)
    extra = out / EXTRA
    extra.mkdir(exist_ok=True)
    write_manifest(
        extra,
        fmt="saved_model",
        spec=spec,
        cfg=model.cfg,
        pad_id=pad_id,
        stop_ids=stop_ids,
        source=source,
        extra={"tensorflow_version": tf.__version__, "signature_keys": sorted(signatures)},
    )
    if tokenizer is not None:
        tokenizer.save(extra / "tokenizer")
    return out


def _bind_params(converted: Any, params: dict[str, Any]) -> Any:
    """serve(input_ids, attention_mask): the converted function with the weight variables closed over."""

    def serve(input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        return converted(params, input_ids, attention_mask)

    return serve


class LoadedSavedModel:
    """A SavedModel loaded by TensorFlow; call a signature with numpy arrays, get numpy arrays back.

    Holds the loaded object: its signature functions read variables that die with it.
    """

    def __init__(self, directory: str | os.PathLike):
        tf = import_tensorflow()
        path = Path(directory)
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{path} has no saved_model.pb: not a SavedModel directory")
        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        self.signatures: dict[str, Any] = dict(self._loaded.signatures)

    def __call__(self, signature: str, input_ids: Any, attention_mask: Any) -> dict[str, np.ndarray]:
        if signature not in self.signatures:
            raise KeyError(f"no signature {signature!r}; this SavedModel has {sorted(self.signatures)}")
        tf = self._tf
        out = self.signatures[signature](
            input_ids=tf.constant(np.asarray(input_ids, np.int32)),
            attention_mask=tf.constant(np.asarray(attention_mask, np.int32)),
        )
        return {k: v.numpy() for k, v in out.items()}
