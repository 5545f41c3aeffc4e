"""One model configuration for every supported decoder family.

GPT-2, the Llama family (Llama 2/3, SmolLM2, Mistral), Qwen2/Qwen3 and Gemma 2/3 differ in a handful of
switches (norm type, positional scheme, MLP shape, biases, q/k norms, sliding windows; Gemma adds norms
around each sublayer, soft-capped logits, a scaled embedding and per-layer rotary bases). Keeping them in
one frozen dataclass lets one decoder implementation serve all of them, and lets the config be a static
(hashable) argument to jitted functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")

# The projections LoRA can adapt, by our logical names (attention q, k, v, o; MLP gate, up, down), and
# how many leading axes of each base weight are its input (o's input is heads x head_dim).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
LORA_INPUT_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}

_DTYPES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
    # For numerical checks against a float64 reference; needs `jax.config.update("jax_enable_x64", True)`.
    "float64": jnp.float64,
}


def resolve_dtype(name: str | Any) -> Any:
    """Turns 'bf16' / 'float32' / a jnp dtype into a jnp dtype, with a clear error for anything else."""
    if not isinstance(name, str):
        return jnp.dtype(name).type
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer, in our own names.

    `family` selects the switches that a checkpoint's `model_type` implies; the switches themselves are
    explicit fields so that a new family is usually a new row in `from_hf_config`, not new model code.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-6
    # Switches that distinguish families.
    norm_type: str = "rms"  # "rms" | "layer"
    mlp_type: str = "gated"  # "gated" (SwiGLU: down(act(gate) * up)) | "plain" (fc -> act -> proj)
    activation: str = "silu"  # "silu" | "gelu_tanh" | "gelu"
    positional: str = "rope"  # "rope" | "learned"
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    # Rotary embeddings.
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # frozen dict of HF rope parameters
    # Sliding-window attention, per layer (0 = full attention).
    sliding_windows: tuple[int, ...] | None = None
    # Gemma's switches (the defaults leave every other family as it was).
    # RMSNorm scale = norm_offset + weight, multiplied in float32 before the cast back (Gemma stores the
    # weight as an offset from 1, so a zero weight is the identity).
    norm_offset: float = 0.0
    # A second norm after each sublayer, before the residual add (Gemma's post-attention and
    # post-feedforward norms): x + post_norm(sublayer(pre_norm(x))).
    sandwich_norms: bool = False
    embed_scale: float = 1.0  # embeddings times this, rounded to the compute dtype (Gemma: sqrt(hidden))
    attn_scale: float | None = None  # query scaling; None = head_dim ** -0.5 (Gemma: query_pre_attn_scalar)
    attn_softcap: float | None = None  # attention scores -> cap * tanh(scores / cap) (Gemma 2)
    logit_softcap: float | None = None  # final logits -> cap * tanh(logits / cap) (Gemma 2)
    # Rotary base of the sliding-window layers when it differs from the full layers' (Gemma 3: 10k local,
    # 1M global); those layers use plain rotary frequencies, the full layers `rope_theta` and its scaling.
    rope_local_theta: float | None = None
    # Token ids.
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # Dtypes: parameters are stored in `param_dtype`; matmuls run in `dtype`; norms and softmax in fp32.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Rematerialisation of the scanned layers in the full-sequence (training) forward:
    # "none" keeps every activation, "full" recomputes each layer in the backward pass, "dots" saves only
    # matmul outputs (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
    remat: str = "none"
    # Attention kernels (numerics are the same up to rounding; see `decoder.attention`):
    # "auto": full-sequence attention (prefill, training) through jax.nn.dot_product_attention, which is
    #   cuDNN flash attention on GPU in bf16/fp16; single-token decoding through the Pallas flash-decoding
    #   kernel on GPU, which reads only the filled part of the KV cache; plain XLA einsums elsewhere.
    # "xla": the plain einsum implementation everywhere (the reference the others are tested against).
    attention: str = "auto"
    # LoRA (`rlvr_jax.models.lora`): rank 0 = off. With rank r > 0 every target projection W gets adapters
    # A [in, r] and B [r, out], and computes x @ W + (lora_alpha / r) * (x @ A) @ B; only A and B train.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        resolve_dtype(self.dtype)
        resolve_dtype(self.param_dtype)
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"remat must be one of none, full, dots; got {self.remat!r}")
        if self.attention not in ("auto", "xla"):
            raise ValueError(f"attention must be 'auto' or 'xla'; got {self.attention!r}")
        check_lora(self.lora_rank, self.lora_alpha, self.lora_targets)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # hashable: a static jit argument
        if self.lora_rank and not self.lora_projections:
            raise ValueError(
                f"LoRA targets {self.lora_targets} name no projection of a model with a {self.mlp_type} MLP"
            )

    @property
    def lora_projections(self) -> tuple[str, ...]:
        """The projections that carry adapters: none when LoRA is off; the targets this model has
        otherwise (a plain MLP, GPT-2's, has no `gate`: the default targets name it for gated ones)."""
        if not self.lora_rank:
            return ()
        present = LORA_TARGETS if self.mlp_type == "gated" else tuple(t for t in LORA_TARGETS if t != "gate")
        return tuple(t for t in present if t in self.lora_targets)

    @property
    def lora_scale(self) -> float:
        """alpha / r, the factor on the adapters' product (PEFT's `scaling` without rsLoRA)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def without_lora(self) -> ModelConfig:
        """The base model's config: what a merged export describes."""
        return self.replace(lora_rank=0)

    @property
    def compute_dtype(self) -> Any:
        return resolve_dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return resolve_dtype(self.param_dtype)

    @property
    def rope_parameters(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    def window_array(self) -> np.ndarray:
        """Per-layer sliding window as an int array (0 = none), scanned alongside the layers."""
        if self.sliding_windows is None:
            return np.zeros((self.num_layers,), np.int32)
        return np.asarray(self.sliding_windows, np.int32)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count, for reports and MFU (embeddings counted once when tied)."""
        d, h, kv, hd, f, v = (
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
            self.vocab_size,
        )
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        mlp = (3 if self.mlp_type == "gated" else 2) * d * f
        per_layer = attn + mlp + (4 if self.sandwich_norms else 2) * d
        total = self.num_layers * per_layer + v * d + d
        if not self.tie_word_embeddings:
            total += v * d
        if self.positional == "learned":
            total += self.max_position_embeddings * d
        return total

    def num_adapter_params(self) -> int:
        """LoRA adapter parameters (A and B of every adapted projection in every layer); 0 when LoRA is
        off. The base's `num_params` leaves them out: they are what a LoRA run trains."""
        d, f, r = self.hidden_size, self.intermediate_size, self.lora_rank
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        sizes = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f),
                 "down": (f, d)}  # fmt: skip
        return self.num_layers * sum(r * sum(sizes[t]) for t in self.lora_projections)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Builds a config from a transformers `config.json` dict (or a GGUF-derived equivalent)."""
        model_type = hf.get("model_type")
        if model_type is None:
            raise ValueError("config.json has no 'model_type'; is this a Hugging Face causal-LM checkpoint?")
        builder = _HF_BUILDERS.get(model_type)
        if builder is None:
            raise ValueError(
                f"unsupported architecture model_type={model_type!r}; supported: {', '.join(_HF_BUILDERS)}. "
                "Convert the model to one of these families or open an issue for the new family."
            )
        fields = builder(hf)
        fields.update(_token_ids(hf))
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The inverse of `from_hf_config`: a config.json dict that transformers loads."""
        return _to_hf(self)


def check_lora(rank: Any, alpha: Any, targets: Any) -> None:
    """Raises ValueError naming what is wrong with LoRA options (shared by ModelConfig and the config
    validation, so a bad `model.lora.*` fails before any weight is loaded)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"LoRA rank must be an integer >= 0 (0 = off), got {rank!r}")
    number = isinstance(alpha, int | float) and not isinstance(alpha, bool)
    if not number or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r}")
    if isinstance(targets, str) or not isinstance(targets, tuple | list):
        raise ValueError(f"LoRA targets must be a tuple of projection names, got {targets!r}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose among {', '.join(LORA_TARGETS)}")
    if rank and not targets:
        raise ValueError("LoRA is on (rank > 0) but targets is empty: name at least one projection")


def _token_ids(hf: dict[str, Any]) -> dict[str, Any]:
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list | tuple) else ((eos,) if eos is not None else ())
    return {
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_ids": tuple(int(e) for e in eos_ids),
        "pad_token_id": hf.get("pad_token_id"),
    }


def _rope(hf: dict[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """Reads rope theta and scaling from either the transformers 4 or the transformers 5 layout."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
    scaling = {**legacy, **params}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    scaling.pop("type", None)
    scaling["rope_type"] = rope_type
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"rope_type={rope_type!r} is not supported yet (supported: default, linear, llama3)")
    frozen = None if rope_type == "default" else tuple(sorted(scaling.items()))
    return float(theta), frozen


def _llama_like(hf: dict[str, Any], family: str) -> dict[str, Any]:
    heads = hf["num_attention_heads"]
    hidden = hf["hidden_size"]
    theta, scaling = _rope(hf)
    layers = hf["num_hidden_layers"]
    windows = _sliding_windows(hf, family, layers)
    return {
        "family": family,
        "vocab_size": hf["vocab_size"],
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hidden // heads,
        "intermediate_size": hf["intermediate_size"],
        "max_position_embeddings": hf.get("max_position_embeddings", 2048),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "activation": _activation(hf.get("hidden_act", "silu")),
        "qkv_bias": bool(hf.get("attention_bias", family == "qwen2") or family == "qwen2"),
        "out_bias": bool(hf.get("attention_bias", False)) and family in ("llama", "mistral"),
        "mlp_bias": bool(hf.get("mlp_bias", False)),
        "qk_norm": family == "qwen3",
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "sliding_windows": windows,
    }


def _sliding_windows(hf: dict[str, Any], family: str, layers: int) -> tuple[int, ...] | None:
    window = hf.get("sliding_window")
    if not window:
        return None
    if family == "mistral":
        return (int(window),) * layers
    layer_types = hf.get("layer_types")
    if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        if layer_types:
            return tuple(int(window) if t == "sliding_attention" else 0 for t in layer_types)
        first_full = hf.get("max_window_layers", layers)
        return tuple(int(window) if i >= first_full else 0 for i in range(layers))
    return None


def _gemma(hf: dict[str, Any], family: str) -> dict[str, Any]:
    """Gemma 2 and Gemma 3 (text): Llama's layout plus sandwich norms, (1 + w) norms, a sqrt(hidden)
    embedding scale, query_pre_attn_scalar, soft-capping (Gemma 2) or q/k norms (Gemma 3), a tied head,
    and sliding-window layers from `layer_types` (Gemma 3's with their own rotary base)."""
    if family == "gemma3" and "text_config" in hf:  # the multimodal Gemma3ForConditionalGeneration config
        raise ValueError(
            "this is a multimodal Gemma 3 checkpoint (model_type 'gemma3'); load its text model: a "
            "Gemma3ForCausalLM checkpoint (model_type 'gemma3_text', e.g. google/gemma-3-1b-it)"
        )
    heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if layer_types is None:  # configs written before transformers listed the layer types
        every = 2 if family == "gemma2" else int(hf.get("sliding_window_pattern", 6))
        layer_types = [
            "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)
        ]
    windows = tuple(int(window) if window and t == "sliding_attention" else 0 for t in layer_types)
    rope = dict(hf.get("rope_parameters") or {})
    local_theta = None
    if "full_attention" in rope:  # transformers 5: one set of rotary parameters per layer type
        local = rope.get("sliding_attention") or {}
        local_theta = float(local.get("rope_theta", 10000.0))
        if local.get("rope_type", "default") != "default":
            raise ValueError(
                f"sliding-layer rope_type {local['rope_type']!r} is not supported (only default)"
            )
        theta, scaling = _rope({**hf, "rope_parameters": rope["full_attention"], "rope_scaling": None})
    else:
        theta, scaling = _rope(hf)
        if family == "gemma3":
            local_theta = float(hf.get("rope_local_base_freq", 10000.0))
    query_scalar = hf.get("query_pre_attn_scalar") or head_dim
    caps = {k: hf.get(k) for k in ("attn_logit_softcapping", "final_logit_softcapping")}
    return {
        "family": family,
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "intermediate_size": hf["intermediate_size"],
        "max_position_embeddings": hf.get("max_position_embeddings", 8192),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "activation": _activation(hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"),
        "qkv_bias": bool(hf.get("attention_bias", False)),
        "out_bias": bool(hf.get("attention_bias", False)),
        "qk_norm": family == "gemma3",
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "sliding_windows": windows if any(windows) else None,
        "norm_offset": 1.0,
        "sandwich_norms": True,
        "embed_scale": float(hf["hidden_size"]) ** 0.5,
        "attn_scale": float(query_scalar) ** -0.5,
        "attn_softcap": float(caps["attn_logit_softcapping"]) if caps["attn_logit_softcapping"] else None,
        "logit_softcap": float(caps["final_logit_softcapping"]) if caps["final_logit_softcapping"] else None,
        "rope_local_theta": local_theta,
    }


def _gpt2(hf: dict[str, Any]) -> dict[str, Any]:
    hidden = hf.get("n_embd", hf.get("hidden_size"))
    heads = hf.get("n_head", hf.get("num_attention_heads"))
    return {
        "family": "gpt2",
        "vocab_size": hf["vocab_size"],
        "hidden_size": hidden,
        "num_layers": hf.get("n_layer", hf.get("num_hidden_layers")),
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": hidden // heads,
        "intermediate_size": hf.get("n_inner") or 4 * hidden,
        "max_position_embeddings": hf.get("n_positions", 1024),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "norm_type": "layer",
        "mlp_type": "plain",
        "activation": _activation(hf.get("activation_function", "gelu_new")),
        "positional": "learned",
        "qkv_bias": True,
        "out_bias": True,
        "mlp_bias": True,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def _activation(name: str) -> str:
    table = {
        "silu": "silu",
        "swish": "silu",
        "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_fast": "gelu_tanh",
        "gelu": "gelu",
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(table)}")
    return table[name]


_HF_BUILDERS = {
    "gpt2": _gpt2,
    "llama": lambda hf: _llama_like(hf, "llama"),
    "mistral": lambda hf: _llama_like(hf, "mistral"),
    "qwen2": lambda hf: _llama_like(hf, "qwen2"),
    "qwen3": lambda hf: _llama_like(hf, "qwen3"),
    "gemma2": lambda hf: _gemma(hf, "gemma2"),
    "gemma3_text": lambda hf: _gemma(hf, "gemma3"),
    "gemma3": lambda hf: _gemma(hf, "gemma3"),
}

_ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
_MODEL_TYPES = {"gemma3": "gemma3_text"}  # our family name -> transformers' model_type where they differ


def _to_hf(cfg: ModelConfig) -> dict[str, Any]:
    eos: Any = list(cfg.eos_token_ids)
    eos = eos[0] if len(eos) == 1 else (eos or None)
    common = {
        "architectures": [_ARCHITECTURES[cfg.family]],
        "model_type": _MODEL_TYPES.get(cfg.family, cfg.family),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": cfg.param_dtype
        if cfg.param_dtype in ("float32", "bfloat16", "float16")
        else {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[cfg.param_dtype],
    }
    if cfg.family == "gpt2":
        return {
            **common,
            "n_embd": cfg.hidden_size,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_inner": cfg.intermediate_size,
            "n_positions": cfg.max_position_embeddings,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu"}[cfg.activation],
        }
    hidden_act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.activation]
    rope = {"rope_theta": cfg.rope_theta, **(cfg.rope_parameters or {"rope_type": "default"})}
    out: dict[str, Any] = {
        **common,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": hidden_act,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
    }
    if cfg.rope_scaling:
        out["rope_scaling"] = dict(cfg.rope_parameters)
    if cfg.family in ("llama", "mistral"):
        out["attention_bias"] = cfg.qkv_bias
        out["mlp_bias"] = cfg.mlp_bias
    if cfg.family == "qwen3":
        out["attention_bias"] = cfg.qkv_bias
    if cfg.family in ("gemma2", "gemma3"):
        return _gemma_to_hf(cfg, out)
    if cfg.sliding_windows and any(cfg.sliding_windows):
        window = max(cfg.sliding_windows)
        out["sliding_window"] = window
        if cfg.family in ("qwen2", "qwen3"):
            out["use_sliding_window"] = True
            out["layer_types"] = ["sliding_attention" if w else "full_attention" for w in cfg.sliding_windows]
    return out


def _whole(x: float) -> int | float:
    """x as an int when it is one up to rounding (transformers types query_pre_attn_scalar as int)."""
    return round(x) if abs(x - round(x)) < 1e-6 * max(1.0, abs(x)) else x


def _gemma_to_hf(cfg: ModelConfig, out: dict[str, Any]) -> dict[str, Any]:
    """Gemma's config.json from the common fields in `out` and Gemma's own switches."""
    out = {k: v for k, v in out.items() if k not in ("hidden_act", "rope_scaling")}
    windows = cfg.sliding_windows or (0,) * cfg.num_layers
    full = {"rope_theta": cfg.rope_theta, **(cfg.rope_parameters or {"rope_type": "default"})}
    if cfg.family == "gemma3":
        local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or 10000.0}
        out["rope_parameters"] = {"full_attention": full, "sliding_attention": local}
        out.pop("rope_theta")
    out.update(
        hidden_activation={"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.activation],
        attention_bias=cfg.qkv_bias,
        query_pre_attn_scalar=_whole((cfg.attn_scale or cfg.head_dim**-0.5) ** -2),
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.logit_softcap,
        sliding_window=max(windows) or None,
        layer_types=["sliding_attention" if w else "full_attention" for w in windows],
    )
    return out


def rope_frequencies(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse rotary frequencies [head_dim // 2], with the checkpoint's scaling rule applied; `local`:
    those of the sliding-window layers when they have their own base (`rope_local_theta`, unscaled)."""
    dim = cfg.head_dim
    theta = cfg.rope_local_theta if local and cfg.rope_local_theta else cfg.rope_theta
    inv = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if local and cfg.rope_local_theta:
        return inv
    params = cfg.rope_parameters
    kind = params.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(params["factor"])
    elif kind == "llama3":
        factor = float(params["factor"])
        low = float(params.get("low_freq_factor", 1.0))
        high = float(params.get("high_freq_factor", 4.0))
        original = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = original / low, original / high
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(is_mid, mid, scaled)
    return inv
