"""One entry point from any model source to a Flax model + tokenizer, and back to an HF directory.

Sources: a Hugging Face hub id (`Qwen/Qwen2.5-0.5B-Instruct`), a local HF directory (config.json +
safetensors, sharded or not), or a GGUF file. Every source becomes (HF config dict, HF-named tensors)
first, then one mapping fills the model's abstract state, so all three behave the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models import lora
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.decoder import Decoder, abstract_model
from rlvr_jax.models.tokenizer import Tokenizer, generation_eos
from rlvr_jax.weights import hf
from rlvr_jax.weights.hf import CheckpointError


@dataclasses.dataclass
class LoadedModel:
    """What `load_model` returns: the model, its tokenizer and config, and where they came from."""

    model: Decoder
    tokenizer: Tokenizer
    config: ModelConfig
    source: str
    kind: str  # "hub" | "hf_dir" | "gguf"
    hf_config: dict[str, Any]


def source_kind(src: str | os.PathLike) -> str:
    """Classifies a model source; raises with a clear message for paths that do not exist."""
    text = os.fspath(src)
    path = Path(text).expanduser()
    if path.is_file():
        if _is_gguf(path):
            return "gguf"
        raise CheckpointError(
            f"{path} is a file but not a GGUF model (no GGUF magic bytes). Pass a .gguf file, a Hugging "
            "Face model directory (config.json + *.safetensors) or a hub id such as "
            "Qwen/Qwen2.5-0.5B-Instruct."
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf_dir"
        ggufs = sorted(path.glob("*.gguf"))
        hint = f" It holds {ggufs[0].name}: pass that file instead." if ggufs else ""
        raise CheckpointError(
            f"{path} is a directory without config.json, so not a Hugging Face model.{hint}"
        )
    looks_local = text.startswith(("/", ".", "~")) or text.endswith(".gguf") or text.count("/") > 1
    if looks_local:
        raise FileNotFoundError(f"model path {text!r} does not exist (resolved to {path.resolve()})")
    return "hub"


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def load_model(
    src: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    revision: str | None = None,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Loads a model from a hub id, an HF directory or a GGUF file.

    Args:
      src: the source.
      dtype: compute dtype ("float32" or "bfloat16").
      param_dtype: storage dtype of the parameters (default: same as `dtype`).
      revision: hub revision (branch, tag or commit) for hub ids.
      with_tokenizer: also load the tokenizer (skip for weight-only conversions in tests).
    """
    kind = source_kind(src)
    text = os.fspath(src)
    chat_template = None
    if kind == "gguf":
        from rlvr_jax.weights.gguf import load_gguf

        ckpt = load_gguf(text)
        hf_config, tensors, chat_template = ckpt.hf_config, ckpt.tensors, ckpt.chat_template
        directory = None
    else:
        directory = Path(text).expanduser() if kind == "hf_dir" else hf.download_from_hub(text, revision)
        hf_config = hf.read_config(directory)
        tensors = hf.read_safetensors(directory)
    cfg = ModelConfig.from_hf_config(hf_config, dtype=dtype, param_dtype=param_dtype or dtype)
    model = params_to_model(cfg, hf.tensors_to_params(cfg, tensors, source=text))
    del tensors
    tokenizer = None
    if with_tokenizer:
        tokenizer = load_tokenizer(text if directory is None else directory, cfg, kind=kind)
        if chat_template and not tokenizer.chat_template:
            tokenizer.hf.chat_template = chat_template
    return LoadedModel(
        model=model, tokenizer=tokenizer, config=cfg, source=text, kind=kind, hf_config=hf_config
    )


def params_to_model(cfg: ModelConfig, params: dict[str, Any]) -> Decoder:
    """Fills the model's abstract state with loaded numpy arrays (checked for shape) and merges it."""
    graphdef, state = nnx.split(abstract_model(cfg))
    expected = nnx.to_pure_dict(state)
    hf.check_shapes(expected, params, source=f"{cfg.family} config")
    dt = cfg.weight_dtype
    arrays = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), dtype=dt), params)
    nnx.replace_by_pure_dict(state, arrays)
    return nnx.merge(graphdef, state)


def model_to_params(model: Decoder) -> dict[str, Any]:
    """The model's parameters as a nested dict of float32 numpy arrays."""
    state = nnx.state(model, nnx.Param)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), nnx.to_pure_dict(state))


def export_hf(
    model: Decoder,
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    *,
    dtype: str | None = None,
) -> Path:
    """Writes an HF directory (config.json, safetensors, tokenizer, generation_config.json).

    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads it with the same logits; so do tools
    built on that layout (vLLM, TGI, llama.cpp's converter). Weights are written in `dtype`
    (default: float32, which keeps logits exact; "bfloat16" halves the size).

    An export is handed to other users and tools (a server running as another uid, a shared model store),
    so its files are made readable by all (0644) and the directory enterable by all (0755), whatever the
    umask: safetensors writes its file private (0600). Paths owned by another user are left as they are.

    A model with LoRA adapters is exported merged (W + alpha / r * A @ B, `lora.merged_model`): a plain
    base-architecture checkpoint that needs no PEFT to load; `export_peft` writes the adapters alone.
    """
    model = lora.merged_model(model)
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf.params_to_tensors(cfg, model_to_params(model))
    save_dtype = dtype or "float32"
    if save_dtype in ("bfloat16", "bf16"):
        import ml_dtypes

        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
        save_dtype = "bfloat16"
    elif save_dtype in ("float16", "fp16"):
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
        save_dtype = "float16"
    hf_config = cfg.to_hf_config()
    hf_config["torch_dtype"] = save_dtype
    hf_config["dtype"] = save_dtype
    written = hf.write_safetensors(tensors, out)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    generation = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) != 1 else cfg.eos_token_ids[0],
        "pad_token_id": cfg.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    written += [out / "config.json", out / "generation_config.json"]
    if tokenizer is not None:
        written += tokenizer.save(out)
    for path, mode in [(out, 0o755), *((path, 0o644) for path in written)]:
        if path.stat().st_uid == os.geteuid():  # a shared folder of another owner keeps its mode
            path.chmod(mode)
    return out


def load_tokenizer(
    src: str | os.PathLike, config: ModelConfig | None = None, kind: str | None = None
) -> Tokenizer:
    """The tokenizer of a model source: a GGUF file's embedded one, or AutoTokenizer for a dir / hub id
    (a folder whose tokenizer_config.json names the generic TokenizersBackend, as our exports of
    SmolLM2-style tokenizers do, loads that class directly: `load_tokenizer_folder`, no torch import)."""
    text = os.fspath(src)
    if kind == "gguf" or text.endswith(".gguf"):
        from rlvr_jax.weights.gguf import load_gguf_tokenizer

        return Tokenizer(load_gguf_tokenizer(text), config)

    try:
        if Path(text).is_dir():
            from rlvr_jax.weights.gguf import load_tokenizer_folder

            hf_tok = load_tokenizer_folder(text)
        else:
            from transformers import AutoTokenizer

            hf_tok = AutoTokenizer.from_pretrained(text)
    except Exception as e:
        raise ValueError(
            f"could not load a tokenizer from {text!r} ({type(e).__name__}: {e}); the directory needs "
            "tokenizer.json or tokenizer_config.json (export with tokenizer files, or copy them in)"
        ) from e
    extra = generation_eos(Path(text)) if Path(text).is_dir() else []
    return Tokenizer(hf_tok, config, extra_eos=extra)


def load_policy(
    src: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    param_dtype: str = "float32",
    remat: str = "none",
    attention: str = "auto",
    lora_options: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Decoder, Tokenizer]:
    """A model to train or evaluate and its tokenizer: `load_model`, with the compute / storage dtypes and
    the remat policy and attention kernels of the run (both change only the graph, so they are set on the
    abstract model and the loaded weights are merged into it). lora_options: `lora.with_adapters`' rank,
    alpha and targets (rank 0 or None: no adapters); the adapters' A is drawn from `seed`, B starts at
    zero."""
    loaded = load_model(src, dtype=dtype, param_dtype=param_dtype)
    cfg = loaded.config.replace(remat=remat, attention=attention)
    graphdef, _ = nnx.split(abstract_model(cfg))
    model = nnx.merge(graphdef, nnx.state(loaded.model))
    if lora_options and lora_options.get("rank"):
        model = lora.with_adapters(model, **lora_options, seed=seed)
    return model, loaded.tokenizer
