"""LoRA adapters out as a PEFT adapter directory: adapter_config.json + adapter_model.safetensors.

`peft.PeftModel.from_pretrained(base, out_dir)` puts them onto the transformers base model (the one
`model.path` names) and computes what our adapter model computes; that directory is megabytes where a
merged export (`export_hf`) is the whole model again. The tensor names are PEFT's
(`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`) and the layouts torch Linear's:
lora_A [r, in], lora_B [out, r], with our multi-axis inputs / outputs (heads x head_dim) flattened in the
order transformers flattens them. PEFT's scaling is lora_alpha / r, as ours (rsLoRA off).
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


def adapter_tensors(cfg: Any, layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our stacked adapters (numpy) -> PEFT-named tensors in torch Linear layouts."""
    r = cfg.lora_rank
    tensors = {}
    for target in cfg.lora_projections:
        a_name, b_name = adapter_names(target)
        for i in range(cfg.num_layers):
            prefix = f"base_model.model.model.layers.{i}.{HF_MODULES[target]}"
            a, b = np.asarray(layers[a_name][i]), np.asarray(layers[b_name][i])
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, r).T)  # [r, in]
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b.reshape(r, -1).T)  # [out, r]
    return tensors


def adapter_config(cfg: Any, base_model: str | None) -> dict[str, Any]:
    """adapter_config.json for `peft.LoraConfig`: rank, alpha, the transformers module names targeted."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": sorted(HF_MODULES[t].split(".")[-1] for t in cfg.lora_projections),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def export_peft(model: Any, out_dir: str | os.PathLike, *, base_model: str | None = None) -> Path:
    """Writes `model`'s LoRA adapters as a PEFT adapter directory; returns it.

    base_model: the base model's hub id or path, recorded as `base_model_name_or_path` (what
    `AutoPeftModelForCausalLM` loads under the adapters). GPT-2's fused c_attn has no separate q/k/v
    modules for PEFT to adapt: export such a model merged (`export_hf`).
    """
    from safetensors.numpy import save_file

    from rlvr_jax.weights.loader import model_to_params

    cfg = model.cfg
    if not cfg.lora_rank:
        raise CheckpointError("the model has no LoRA adapters (model.lora.rank = 0): nothing to export")
    if cfg.family == "gpt2":
        raise CheckpointError(
            "PEFT export of GPT-2 adapters is not supported (its q/k/v are one fused c_attn module); "
            "export the merged model with export_hf instead"
        )
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
