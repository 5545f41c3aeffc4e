"""LoRA adapters out as a PEFT adapter directory: adapter_config.json + adapter_model.safetensors.

`peft.PeftModel.from_pretrained(base, out_dir)` puts them onto the transformers base model (the one
`model.path` names) and computes what our adapter model computes; that directory is megabytes where a
merged export (`export_hf`) is the whole model again. The tensor names are PEFT's
(`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`) and the layouts torch Linear's:
lora_A [r, in], lora_B [out, r], with our multi-axis inputs / outputs (heads x head_dim) flattened in the
order transformers flattens them. PEFT's scaling is lora_alpha / r, as ours (rsLoRA off).

GPT-2 computes q, k and v with one fused module (`attn.c_attn`, a Conv1D of 3 x hidden outputs) where we
keep three projections with an adapter each. The export is still exact: PEFT's single c_attn adapter gets
rank n * r (n = how many of q, k, v carry adapters), A the n A's stacked, B block-diagonal (each adapter's
B in its own output slice, zeros elsewhere), and lora_alpha n * alpha, so that its scale alpha / r is ours
(`rank_pattern` / `alpha_pattern` set this for c_attn alone). Its other modules are named by full path,
since `c_proj` is both the attention output and the MLP's down projection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.models.lora import adapter_names
from rlvr_jax.weights.hf import CheckpointError

# Our projection names -> the transformers module path inside a layer of the Llama-style families.
HF_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


# GPT-2's modules (transformer.h.{i}.<module>); q, k and v share c_attn.
GPT2_MODULES = {"q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj",
                "up": "mlp.c_fc", "down": "mlp.c_proj"}  # fmt: skip
FUSED_QKV = ("q", "k", "v")


def _torch_layout(a: np.ndarray, b: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's A [in..., r] and B [r, out...] -> lora_A [r, in] and lora_B [out, r]."""
    return np.ascontiguousarray(a.reshape(-1, r).T), np.ascontiguousarray(b.reshape(r, -1).T)


def _fused_qkv(cfg: Any, layers: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer i's q / k / v adapters as one c_attn adapter of rank n * r (see the module docstring)."""
    r, width = cfg.lora_rank, cfg.num_heads * cfg.head_dim
    targets = [t for t in FUSED_QKV if t in cfg.lora_projections]
    blocks = [
        _torch_layout(layers[adapter_names(t)[0]][i], layers[adapter_names(t)[1]][i], r) for t in targets
    ]
    a = np.concatenate([lora_a for lora_a, _ in blocks], axis=0)  # [n * r, hidden]
    b = np.zeros((3 * width, len(targets) * r), blocks[0][1].dtype)  # c_attn's outputs: q, then k, then v
    for j, (t, (_, lora_b)) in enumerate(zip(targets, blocks, strict=True)):
        row = FUSED_QKV.index(t) * width
        b[row : row + lora_b.shape[0], j * r : (j + 1) * r] = lora_b
    return a, b


def adapter_tensors(cfg: Any, layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our stacked adapters (numpy) -> PEFT-named tensors in torch Linear layouts."""
    r = cfg.lora_rank
    tensors = {}
    for i in range(cfg.num_layers):
        for target in cfg.lora_projections:
            if cfg.family == "gpt2" and target in FUSED_QKV:
                if target != next(t for t in FUSED_QKV if t in cfg.lora_projections):
                    continue  # c_attn is written once, with the first of q / k / v
                lora_a, lora_b = _fused_qkv(cfg, layers, i)
            else:
                a_name, b_name = adapter_names(target)
                lora_a, lora_b = _torch_layout(
                    np.asarray(layers[a_name][i]), np.asarray(layers[b_name][i]), r
                )
            prefix = _module_path(cfg, i, target)
            tensors[f"{prefix}.lora_A.weight"] = lora_a  # [r, in]
            tensors[f"{prefix}.lora_B.weight"] = lora_b  # [out, r]
    return tensors


def _module_path(cfg: Any, i: int, target: str) -> str:
    if cfg.family == "gpt2":
        return f"base_model.model.transformer.h.{i}.{GPT2_MODULES[target]}"
    return f"base_model.model.model.layers.{i}.{HF_MODULES[target]}"


def adapter_config(cfg: Any, base_model: str | None) -> dict[str, Any]:
    """adapter_config.json for `peft.LoraConfig`: rank, alpha, the transformers module names targeted."""
    gpt2 = cfg.family == "gpt2"
    fused = [t for t in FUSED_QKV if t in cfg.lora_projections] if gpt2 else []
    if gpt2:  # full paths: c_proj is two modules; a regex string is matched against each module's name
        paths = sorted({GPT2_MODULES[t] for t in cfg.lora_projections})
        targets: Any = r".*\.(" + "|".join(p.replace(".", r"\.") for p in paths) + ")$"
    else:
        targets = sorted(HF_MODULES[t].split(".")[-1] for t in cfg.lora_projections)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "rank_pattern": {"c_attn": len(fused) * cfg.lora_rank} if fused else {},
        "alpha_pattern": {"c_attn": len(fused) * cfg.lora_alpha} if fused else {},
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": gpt2,  # GPT-2's Conv1D stores its weight [in, out]
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def export_peft(model: Any, out_dir: str | os.PathLike, *, base_model: str | None = None) -> Path:
    """Writes `model`'s LoRA adapters as a PEFT adapter directory; returns it.

    base_model: the base model's hub id or path, recorded as `base_model_name_or_path` (what
    `AutoPeftModelForCausalLM` loads under the adapters). GPT-2's q / k / v adapters become one adapter of
    its fused c_attn (module docstring).
    """
    from safetensors.numpy import save_file

    from rlvr_jax.weights.loader import model_to_params

    cfg = model.cfg
    if not cfg.lora_rank:
        raise CheckpointError("the model has no LoRA adapters (model.lora.rank = 0): nothing to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(cfg, model_to_params(model)["layers"])
    weights, config = out / "adapter_model.safetensors", out / "adapter_config.json"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config.write_text(json.dumps(adapter_config(cfg, base_model), indent=2, sort_keys=True))
    for path, mode in ((out, 0o755), (weights, 0o644), (config, 0o644)):
        if path.stat().st_uid == os.geteuid():  # readable by the server or store it is handed to
            path.chmod(mode)
    return out
