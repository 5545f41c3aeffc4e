"""Hugging Face checkpoints: safetensors in, safetensors out, no torch.

The mapping between transformers' parameter names/layouts and ours is one table per family
(`_layer_table`), used in both directions, so import and export cannot drift apart. GGUF files are first
turned into the same (config dict, HF-named tensors) pair by `rlvr_jax.weights.gguf`, so every source
goes through `tensors_to_params`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.models.config import ModelConfig

Tensors = dict[str, np.ndarray]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------
# Reading a directory or the hub.


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Fetches config, weights and tokenizer files of a hub model (cached by huggingface_hub)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency of transformers
        raise CheckpointError(
            "huggingface_hub is needed to download models: pip install huggingface_hub"
        ) from e
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:  # the hub raises many types: offline, 404, gated, auth
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "If this machine is offline, download the model elsewhere and pass its local directory "
            "(config.json + *.safetensors) or a .gguf file instead; if the repo is gated, run "
            "`huggingface-cli login` first."
        ) from e


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; it is not a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def read_safetensors(directory: Path) -> Tensors:
    """Reads model.safetensors, or every shard listed in model.safetensors.index.json."""
    from safetensors.numpy import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
            raise CheckpointError(
                f"{directory} holds PyTorch .bin weights only; we read safetensors (no torch needed). "
                "Convert once with transformers: AutoModelForCausalLM.from_pretrained(dir)"
                ".save_pretrained(dir, safe_serialization=True)."
            )
        raise CheckpointError(f"{directory} has no *.safetensors weight files")
    tensors: Tensors = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"shard {name} listed in {index} is missing from {directory}")
        for key, value in _load_safetensors_file(load_file, path).items():
            tensors[key] = value
    return tensors


def _load_safetensors_file(load_file: Callable[[str], Tensors], path: Path) -> Tensors:
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"could not read {path} as safetensors ({e}); the file may be truncated") from e


# --------------------------------------------------------------------------------------------------
# The name/layout table.

_Fn = Callable[[np.ndarray], np.ndarray]


def _layer_table(cfg: ModelConfig) -> list[tuple[str, str, _Fn, _Fn]]:
    """(HF name suffix inside layer i, our stacked-param name, HF->ours, ours->HF) for one layer."""
    D, H, K, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    same: _Fn = lambda w: w
    t: _Fn = lambda w: w.T

    def proj_in(heads: int) -> tuple[_Fn, _Fn]:  # torch Linear [heads*Dh, D] <-> ours [D, heads, Dh]
        return (lambda w: w.T.reshape(D, heads, Dh), lambda w: w.reshape(D, heads * Dh).T)

    def head_bias(heads: int) -> tuple[_Fn, _Fn]:
        return (lambda b: b.reshape(heads, Dh), lambda b: b.reshape(heads * Dh))

    out_proj = (lambda w: w.T.reshape(H, Dh, D), lambda w: w.reshape(H * Dh, D).T)

    if cfg.family == "gpt2":
        # GPT-2's Conv1D stores [in, out]; c_attn fuses q, k, v along the output axis (handled below).
        rows = [
            ("ln_1.weight", "attn_norm", same, same),
            ("ln_1.bias", "attn_norm_bias", same, same),
            ("ln_2.weight", "mlp_norm", same, same),
            ("ln_2.bias", "mlp_norm_bias", same, same),
            ("attn.c_proj.weight", "o", lambda w: w.reshape(H, Dh, D), lambda w: w.reshape(H * Dh, D)),
            ("attn.c_proj.bias", "o_bias", same, same),
            ("mlp.c_fc.weight", "up", same, same),
            ("mlp.c_fc.bias", "up_bias", same, same),
            ("mlp.c_proj.weight", "down", same, same),
            ("mlp.c_proj.bias", "down_bias", same, same),
        ]
        return rows

    if cfg.sandwich_norms:  # Gemma: a norm before and after each sublayer; "post_attention" is the latter
        rows = [
            ("input_layernorm.weight", "attn_norm", same, same),
            ("post_attention_layernorm.weight", "attn_post_norm", same, same),
            ("pre_feedforward_layernorm.weight", "mlp_norm", same, same),
            ("post_feedforward_layernorm.weight", "mlp_post_norm", same, same),
        ]
    else:  # Llama's "post_attention_layernorm" is the norm before the MLP
        rows = [
            ("input_layernorm.weight", "attn_norm", same, same),
            ("post_attention_layernorm.weight", "mlp_norm", same, same),
        ]
    rows += [
        ("self_attn.q_proj.weight", "q", *proj_in(H)),
        ("self_attn.k_proj.weight", "k", *proj_in(K)),
        ("self_attn.v_proj.weight", "v", *proj_in(K)),
        ("self_attn.o_proj.weight", "o", *out_proj),
        ("mlp.gate_proj.weight", "gate", t, t),
        ("mlp.up_proj.weight", "up", t, t),
        ("mlp.down_proj.weight", "down", t, t),
    ]
    if cfg.qkv_bias:
        rows += [
            ("self_attn.q_proj.bias", "q_bias", *head_bias(H)),
            ("self_attn.k_proj.bias", "k_bias", *head_bias(K)),
            ("self_attn.v_proj.bias", "v_bias", *head_bias(K)),
        ]
    if cfg.out_bias:
        rows.append(("self_attn.o_proj.bias", "o_bias", same, same))
    if cfg.qk_norm:
        rows += [
            ("self_attn.q_norm.weight", "q_norm", same, same),
            ("self_attn.k_norm.weight", "k_norm", same, same),
        ]
    if cfg.mlp_bias:
        rows += [
            ("mlp.gate_proj.bias", "gate_bias", same, same),
            ("mlp.up_proj.bias", "up_bias", same, same),
            ("mlp.down_proj.bias", "down_bias", same, same),
        ]
    return rows


def _top_table(cfg: ModelConfig) -> list[tuple[str, str, _Fn, _Fn]]:
    same: _Fn = lambda w: w
    t: _Fn = lambda w: w.T
    if cfg.family == "gpt2":
        rows = [
            ("wte.weight", "embed", same, same),
            ("wpe.weight", "pos_embed", same, same),
            ("ln_f.weight", "final_norm", same, same),
            ("ln_f.bias", "final_norm_bias", same, same),
        ]
    else:
        rows = [
            ("model.embed_tokens.weight", "embed", same, same),
            ("model.norm.weight", "final_norm", same, same),
        ]
    if not cfg.tie_word_embeddings:
        rows.append(("lm_head.weight", "lm_head", t, t))
    return rows


def _layer_prefix(cfg: ModelConfig, i: int) -> str:
    return f"h.{i}." if cfg.family == "gpt2" else f"model.layers.{i}."


# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def _normalise_names(cfg: ModelConfig, tensors: Tensors) -> Tensors:
    """GPT-2 checkpoints come with or without the 'transformer.' prefix; drop it, and drop buffers."""
    out = {}
    for name, value in tensors.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if cfg.family == "gpt2" and name.startswith("transformer."):
            name = name[len("transformer.") :]
        out[name] = value
    return out


def tensors_to_params(cfg: ModelConfig, tensors: Tensors, source: str = "checkpoint") -> dict[str, Any]:
    """HF-named tensors -> our nested parameter dict (numpy, float32), checking names and shapes."""
    tensors = _normalise_names(cfg, tensors)
    if cfg.tie_word_embeddings and "lm_head.weight" in tensors:
        # Some tied checkpoints still store the (identical) head; it carries no extra information.
        tensors.pop("lm_head.weight")
    if cfg.family == "gpt2":
        tensors = _split_gpt2_qkv(cfg, tensors)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(
                f"{source}: tensor {name!r} is missing; the weights do not match the "
                f"{cfg.family} config (is config.json from the same model?)"
            )
        used.add(name)
        return np.asarray(tensors[name], dtype=np.float32)

    def convert(name: str, to_ours: _Fn) -> np.ndarray:
        value = take(name)
        try:
            return to_ours(value)
        except ValueError:  # a reshape to the config's layout failed: the sizes disagree
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {value.shape}, which does not fit the config "
                f"(hidden_size={cfg.hidden_size}, heads={cfg.num_heads}, kv_heads={cfg.num_kv_heads}, "
                f"head_dim={cfg.head_dim}); the weights and config.json disagree."
            ) from None

    params: dict[str, Any] = {}
    for hf_name, ours, to_ours, _ in _top_table(cfg):
        params[ours] = convert(hf_name, to_ours)
    layers: dict[str, list[np.ndarray]] = {}
    for i in range(cfg.num_layers):
        for suffix, ours, to_ours, _ in _layer_table(cfg) + _gpt2_qkv_rows(cfg):
            layers.setdefault(ours, []).append(convert(_layer_prefix(cfg, i) + suffix, to_ours))
    params["layers"] = {name: np.stack(values) for name, values in layers.items()}

    unused = sorted(set(tensors) - used)
    if unused:
        shown = ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
        raise CheckpointError(
            f"{source}: {len(unused)} tensors are not used by a {cfg.family} model with "
            f"{cfg.num_layers} layers: {shown}. The config and weights disagree."
        )
    return params


def _gpt2_qkv_rows(cfg: ModelConfig) -> list[tuple[str, str, _Fn, _Fn]]:
    """Rows for the q/k/v pieces that `_split_gpt2_qkv` cuts out of GPT-2's fused c_attn."""
    if cfg.family != "gpt2":
        return []
    D, H, Dh = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    rows = []
    for part in "qkv":
        rows.append(
            (f"attn.{part}.weight", part, lambda w: w.reshape(D, H, Dh), lambda w: w.reshape(D, H * Dh))
        )
        rows.append(
            (f"attn.{part}.bias", f"{part}_bias", lambda b: b.reshape(H, Dh), lambda b: b.reshape(H * Dh))
        )
    return rows


def _split_gpt2_qkv(cfg: ModelConfig, tensors: Tensors) -> Tensors:
    out = dict(tensors)
    for i in range(cfg.num_layers):
        prefix = _layer_prefix(cfg, i) + "attn."
        for kind in ("weight", "bias"):
            fused = out.pop(prefix + f"c_attn.{kind}", None)
            if fused is None:
                continue
            if fused.shape[-1] != 3 * cfg.hidden_size:
                raise CheckpointError(
                    f"{prefix}c_attn.{kind} has shape {fused.shape}; expected last axis 3*n_embd="
                    f"{3 * cfg.hidden_size}"
                )
            for part, piece in zip("qkv", np.split(fused, 3, axis=-1), strict=True):
                out[prefix + f"{part}.{kind}"] = piece
    return out


def params_to_tensors(cfg: ModelConfig, params: dict[str, Any]) -> Tensors:
    """Our nested parameter dict -> HF-named tensors in transformers' layouts (the exporter's core)."""
    tensors: Tensors = {}
    for hf_name, ours, _, to_hf in _top_table(cfg):
        tensors[hf_name] = np.ascontiguousarray(to_hf(np.asarray(params[ours])))
    layers = params["layers"]
    for i in range(cfg.num_layers):
        prefix = _layer_prefix(cfg, i)
        for suffix, ours, _, to_hf in _layer_table(cfg) + _gpt2_qkv_rows(cfg):
            tensors[prefix + suffix] = np.ascontiguousarray(to_hf(np.asarray(layers[ours][i])))
    if cfg.family == "gpt2":
        for i in range(cfg.num_layers):
            prefix = _layer_prefix(cfg, i) + "attn."
            for kind in ("weight", "bias"):
                parts = [tensors.pop(prefix + f"{p}.{kind}") for p in "qkv"]
                tensors[prefix + f"c_attn.{kind}"] = np.concatenate(parts, axis=-1)
        tensors = {f"transformer.{k}" if not k.startswith("lm_head") else k: v for k, v in tensors.items()}
    return tensors


def check_shapes(expected: dict[str, Any], got: dict[str, Any], source: str, path: str = "") -> None:
    """Compares the loaded nested dict with the model's abstract shapes; names the first mismatch."""
    for key, exp in expected.items():
        where = f"{path}.{key}" if path else key
        if isinstance(exp, dict):
            check_shapes(exp, got[key], source, where)
            continue
        shape = tuple(got[key].shape)
        if shape != tuple(exp.shape):
            raise CheckpointError(
                f"{source}: parameter {where} has shape {shape} but the config implies {tuple(exp.shape)}; "
                "the weights and config.json disagree (wrong config, or a truncated/edited checkpoint)."
            )


def write_safetensors(tensors: Tensors, directory: Path, max_shard_bytes: int = 4 << 30) -> list[Path]:
    """Writes model.safetensors (or shards + index when larger than `max_shard_bytes`); returns the files."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return [directory / "model.safetensors"]
    weight_map = {}
    total = sum(t.nbytes for t in tensors.values())
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [directory / name for name in (*sorted(set(weight_map.values())), "model.safetensors.index.json")]


def is_hf_directory(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()
