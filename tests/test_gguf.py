"""GGUF loading: tensor-for-tensor parity with transformers' own GGUF loader, the embedded tokenizer,
and clear errors for files we cannot use.

transformers (torch) is the reference: it dequantises with the same gguf package and undoes llama.cpp's
Q/K row permutation itself, so equal tensors under equal names prove our names, layouts and
permutation.  Real files cover llama (SmolLM2) and qwen2 (Qwen2.5-Coder); tiny synthetic files written
the way llama.cpp's converter writes them cover qwen3, gpt2, biased Q/K, Llama 3 RoPE scaling, and
Gemma 2 / Gemma 3, whose files are also run through our decoder against transformers' logits (no real
Gemma GGUF is at hand; what llama.cpp fixes instead of storing is checked on metadata-only files).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.initialization import no_init_weights
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.tokenizer import Tokenizer
from rlvr_jax.weights import gguf as gguf_module
from rlvr_jax.weights import load_model
from rlvr_jax.weights.gguf import GGUFCheckpoint, load_gguf, load_gguf_tokenizer
from rlvr_jax.weights.hf import CheckpointError
from tests.conftest import REPO
from tests.hf_reference import faster_transformers_gguf, transformers_gguf_tokenizer

QWEN_CODER_DEFAULT = "~/.cache/rlvr-models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
CORE_CONFIG_KEYS = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
}


# --------------------------------------------------------------------------------------------------
# The reference and the comparison.


def transformers_reference(path: Path, hf_config: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """transformers' GGUF loader: its parsed config and its dequantised, renamed, un-permuted tensors.

    This is the function `from_pretrained(..., gguf_file=...)` calls, driven directly so that the
    model skeleton it needs for names can live on the meta device: no accelerate, no random
    initialisation of 0.5B parameters.  The skeleton is built from our config; transformers' own
    parse of the file comes back in `config` and is compared separately.
    """
    config = transformers.AutoConfig.for_model(**hf_config)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    with faster_transformers_gguf():
        parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)
    tensors = {name: t.to(torch.float32).numpy() for name, t in parsed["tensors"].items()}
    return parsed["config"], tensors


def max_tensor_diff(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over all tensors, after checking names, shapes and dtypes."""
    assert sorted(ours) == sorted(reference)
    worst = 0.0
    for name, ref in reference.items():
        mine = ours[name]
        assert mine.dtype == np.float32, name
        assert mine.shape == ref.shape, (name, mine.shape, ref.shape)
        worst = max(worst, float(np.max(np.abs(mine - ref))))
    return worst


def assert_same_config(ours: dict[str, Any], reference: dict[str, Any]) -> None:
    """Every core field transformers parsed agrees with ours (floats up to float32 rounding)."""
    shared = CORE_CONFIG_KEYS & reference.keys()
    assert shared >= CORE_CONFIG_KEYS - {"bos_token_id"}, reference
    for key in sorted(shared):
        if isinstance(reference[key], float):
            assert ours[key] == pytest.approx(reference[key], rel=1e-6), key
        else:
            assert ours[key] == reference[key], key


def check_against_transformers(
    path: Path, ckpt: GGUFCheckpoint | None = None
) -> tuple[GGUFCheckpoint, float]:
    ckpt = ckpt or load_gguf(path)
    ref_config, ref_tensors = transformers_reference(path, ckpt.hf_config)
    assert_same_config(ckpt.hf_config, ref_config)
    return ckpt, max_tensor_diff(ckpt.tensors, ref_tensors)


# --------------------------------------------------------------------------------------------------
# Real files.


@pytest.fixture(scope="module")
def smollm(smollm_gguf: Path) -> GGUFCheckpoint:
    return load_gguf(smollm_gguf)


def test_smollm2_matches_transformers(smollm: GGUFCheckpoint, smollm_gguf: Path) -> None:
    ckpt, worst = check_against_transformers(smollm_gguf, smollm)
    assert worst < 1e-6
    assert len(ckpt.tensors) == 2 + 30 * 9  # embeddings, final norm, 9 per layer; lm_head is tied
    assert "lm_head.weight" not in ckpt.tensors
    assert ckpt.tensors["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert ckpt.tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert ckpt.tensors["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)


def test_smollm2_config_and_metadata(smollm: GGUFCheckpoint, smollm_gguf: Path) -> None:
    """The numbers from ../shared/models/README.md, independently of transformers."""
    config = smollm.hf_config
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,  # exactly, not float32's 9.99999974e-06
        "dtype": "float32",
    }
    assert {key: config[key] for key in expected} == expected
    assert "rope_scaling" not in config
    assert smollm.chat_template is not None and "<|im_start|>" in smollm.chat_template
    assert smollm.metadata["path"] == str(smollm_gguf)
    assert smollm.metadata["quantization_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert smollm.metadata["general.name"].startswith("Smollm2 135M")
    assert smollm.tensors["model.embed_tokens.weight"].flags.writeable


def _listing(directory: Path) -> list[tuple[str, int]]:
    return sorted((entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(directory))


@pytest.fixture(scope="module")
def smollm_tokenizer(smollm_gguf: Path) -> transformers.PreTrainedTokenizerBase:
    # The model folder is read-only (root would not notice): check that nothing is written there.
    before = _listing(smollm_gguf.parent)
    tokenizer = load_gguf_tokenizer(smollm_gguf)
    assert _listing(smollm_gguf.parent) == before, "loading the tokenizer wrote beside the GGUF file"
    return tokenizer


def test_smollm2_tokenizer(smollm: GGUFCheckpoint, smollm_tokenizer, smollm_gguf: Path) -> None:
    reference = transformers_gguf_tokenizer(smollm_gguf)
    text = "Hello world! GGUF files keep the tokenizer: 12 + 30 = 42, naïve café."
    ids = smollm_tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert smollm_tokenizer.decode(ids) == text
    assert smollm_tokenizer.chat_template == smollm.chat_template
    prompt = smollm_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_answers_with_our_tensors(smollm: GGUFCheckpoint, smollm_tokenizer) -> None:
    """Our config and tensors in transformers' torch Llama give the README's greedy answer.

    Independent of transformers' GGUF code: had both of us un-permuted Q/K wrongly in the same
    way, the parity test would pass but this answer would be gibberish.  One teacher-forced
    forward pass checks every greedy step at once.
    """
    with no_init_weights():  # every weight is overwritten below
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**smollm.hf_config)
        )
    tensors = {name: torch.from_numpy(array) for name, array in smollm.tensors.items()}
    assert model.load_state_dict(tensors, strict=False).missing_keys == ["lm_head.weight"]
    model.tie_weights()
    prompt = smollm_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
    )["input_ids"]
    answer = smollm_tokenizer.encode("The capital of France is Paris.", add_special_tokens=False)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([prompt + answer])).logits[0]
    assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == answer


TOKENIZER_PROBES = [
    "Hello world! GGUF files keep the tokenizer: 12 + 30 = 42, naïve café.",
    "  two  spaces\n\n\tand a tab",
    "1234567 * 89 = 109876463",
    "日本語のテキスト 🙂 emoji",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return x ** 2  # comment\n",
    "",
]


def _qwen_coder_gguf() -> Path:
    path = Path(os.environ.get("RLVR_QWEN_CODER_GGUF", QWEN_CODER_DEFAULT)).expanduser()
    if not path.is_file():
        pytest.fail(f"{path} is missing: run ../shared/tools/fetch-qwen-coder (or set RLVR_QWEN_CODER_GGUF)")
    return path


@pytest.mark.parametrize("model", ["smollm2", pytest.param("qwen2.5-coder", marks=pytest.mark.qwen_coder)])
def test_tokenizer_without_torch_equals_transformers_own(
    model: str, smollm_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base package has no torch, and transformers' GGUF reader imports it: there the tokenizer
    is built from our reader's metadata (make demo, `pip install rlvr-jax`). It must be the same
    tokenizer that transformers' own GGUF path gives: same ids, text, template and special tokens."""
    path = smollm_gguf if model == "smollm2" else _qwen_coder_gguf()
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gguf_module, "_transformers_reads_gguf", lambda: False)
    ours = load_gguf_tokenizer(path)
    assert len(list(tmp_path.glob("gguf-tokenizers/*/tokenizer.json"))) == 1  # cached under its own key
    reference = transformers_gguf_tokenizer(path)
    for text in TOKENIZER_PROBES:
        ids = ours(text)["input_ids"]
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids) == reference.decode(ids)
    chat = [{"role": "user", "content": "What is 2+2?"}]
    assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids"):
        assert getattr(ours, name) == getattr(reference, name), name
    assert len(ours) == len(reference)
    # The cached copy loads back as the same tokenizer.
    again = load_gguf_tokenizer(path)
    assert again(TOKENIZER_PROBES[0])["input_ids"] == ours(TOKENIZER_PROBES[0])["input_ids"]


def test_a_cached_tokenizer_loads_back_without_torch_as_autotokenizer_does(
    smollm_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converted tokenizer is kept under RLVR_CACHE_DIR. Loading it back, as every script and server
    start does, must not import torch (AutoTokenizer's module does: 4-5 s) and must give what AutoTokenizer
    gives for the same folder: class, ids, text, template and special tokens."""
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path))
    with faster_transformers_gguf():
        load_gguf_tokenizer(smollm_gguf)  # converts (transformers' own GGUF path) and caches
    (cached,) = [p.parent for p in tmp_path.glob("gguf-tokenizers/*/tokenizer_config.json")]
    code = (
        "import json, sys\n"
        "from rlvr_jax.weights.gguf import load_gguf_tokenizer\n"
        f"tok = load_gguf_tokenizer({str(smollm_gguf)!r})\n"
        f"ids = [tok(text)['input_ids'] for text in {TOKENIZER_PROBES!r}]\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'class': type(tok).__name__, 'ids': ids,\n"
        "    'text': [tok.decode(i) for i in ids], 'template': tok.chat_template, 'size': len(tok),\n"
        "    'special': [getattr(tok, n) for n in ('bos_token_id', 'eos_token_id', 'pad_token_id',\n"
        "                                           'unk_token_id', 'all_special_ids')]}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RLVR_CACHE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["torch"] is False, "loading the cached tokenizer imported torch"
    reference = transformers.AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    assert got["class"] == type(reference).__name__
    assert got["ids"] == [reference(text)["input_ids"] for text in TOKENIZER_PROBES]
    assert got["text"] == [reference.decode(ids) for ids in got["ids"]]
    assert got["template"] == reference.chat_template and got["size"] == len(reference)
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids")
    assert got["special"] == [getattr(reference, name) for name in names]


@pytest.mark.qwen_coder
def test_qwen2_coder_matches_transformers() -> None:
    path = _qwen_coder_gguf()
    ckpt, worst = check_against_transformers(path)
    assert worst < 1e-6
    config = ckpt.hf_config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("qwen2", 24, 896)
    # This export stores lm_head separately (Q8_0, vs Q5_0 embeddings), so it is untied here.
    assert config["tie_word_embeddings"] is False and "lm_head.weight" in ckpt.tensors
    assert len(ckpt.tensors) == 3 + 24 * 12  # embeddings, norm, lm_head; 12 per layer with Q/K/V biases
    assert ckpt.tensors["model.layers.0.self_attn.q_proj.bias"].shape == (896,)
    assert ckpt.metadata["file_type_name"] == "MOSTLY_Q4_K_M"


# --------------------------------------------------------------------------------------------------
# Synthetic files, written the way llama.cpp's convert_hf_to_gguf.py writes them.


def _llamacpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's rotary halves become interleaved pairs."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _llama3_rope_freqs(scaling: dict[str, float], theta: float, head_dim: int) -> np.ndarray:
    """The rope_freqs tensor llama.cpp's converter writes for llama3 RoPE scaling."""
    freqs = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / freqs
    context, low, high = (
        scaling["original_max_position_embeddings"],
        scaling["low_freq_factor"],
        scaling["high_freq_factor"],
    )
    factor = scaling["factor"]
    smooth = (context / wavelen - low) / (high - low)
    between = 1 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelen < context / high, 1.0, np.where(wavelen > context / low, factor, between))
    return divisors.astype(np.float32)


def write_gguf(
    path: Path,
    model: transformers.PreTrainedModel,
    arch: gguf.MODEL_ARCH,
    describe: Callable[[gguf.GGUFWriter], None],
    convert: Callable[[str, np.ndarray], np.ndarray] = lambda name, w: w,
    extra: dict[str, np.ndarray] | None = None,
    name: str = "tiny test model",
) -> None:
    """Write `model` as F32 GGUF using the gguf package's own HF -> GGUF name map."""
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    describe(writer)
    state = model.state_dict()
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, hf_name
        writer.add_tensor(gguf_name, convert(hf_name, tensor.detach().numpy().astype(np.float32)))
    for gguf_name, array in (extra or {}).items():
        writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _describe_decoder(config: transformers.PretrainedConfig) -> Callable[[gguf.GGUFWriter], None]:
    def describe(writer: gguf.GGUFWriter) -> None:
        writer.add_vocab_size(config.vocab_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_bos_token_id(config.bos_token_id)
        writer.add_eos_token_id(config.eos_token_id)

    return describe


def _state(model: transformers.PreTrainedModel) -> dict[str, np.ndarray]:
    tensors = {name: t.detach().numpy() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    return tensors


def test_synthetic_mistral_with_bias_and_llama3_rope(tmp_path: Path) -> None:
    """Biased Q/K rows are permuted too; Llama 3 RoPE scaling comes back from rope_freqs; Mistral
    (architecture 'llama' in GGUF) is told apart by its name."""
    torch.manual_seed(0)
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, attention_bias=True, tie_word_embeddings=False, max_position_embeddings=131072,
        rope_parameters={"rope_theta": 500000.0, **scaling}, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()

    def permute(name: str, w: np.ndarray) -> np.ndarray:
        if "q_proj" in name:
            return _llamacpp_permute(w, config.num_attention_heads)
        if "k_proj" in name:
            return _llamacpp_permute(w, config.num_key_value_heads)
        return w

    path = tmp_path / "tiny-mistral.gguf"
    freqs = _llama3_rope_freqs(scaling, 500000.0, 64)
    extra = {"rope_freqs.weight": freqs}
    write_gguf(path, model, gguf.MODEL_ARCH.LLAMA, _describe_decoder(config), permute, extra, "Mistral Tiny")
    ckpt = load_gguf(path)
    assert ckpt.hf_config["model_type"] == "mistral"
    assert ckpt.hf_config["rope_scaling"] == scaling
    assert max_tensor_diff(ckpt.tensors, _state(model)) == 0.0
    assert ckpt.hf_config["attention_bias"] is True and ckpt.hf_config["tie_word_embeddings"] is False


def test_synthetic_qwen3_matches_transformers(tmp_path: Path) -> None:
    """Qwen3: no permutation, q/k norms, and a head_dim that is not hidden_size / heads."""
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = transformers.Qwen3ForCausalLM(config).eval()
    path = tmp_path / "tiny-qwen3.gguf"
    write_gguf(path, model, gguf.MODEL_ARCH.QWEN3, _describe_decoder(config))
    ckpt, worst = check_against_transformers(path)
    assert worst == 0.0
    assert max_tensor_diff(ckpt.tensors, _state(model)) == 0.0
    assert ckpt.hf_config["head_dim"] == 32


def test_synthetic_gpt2_matches_transformers(tmp_path: Path) -> None:
    """GPT-2: Conv1D weights go back to [in, out]; position embeddings and LayerNorm biases map."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=160
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    def describe(writer: gguf.GGUFWriter) -> None:
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)

    path = tmp_path / "tiny-gpt2.gguf"
    write_gguf(path, model, gguf.MODEL_ARCH.GPT2, describe, lambda n, w: w.T if n.endswith(conv1d) else w)
    ckpt = load_gguf(path)
    _, reference = transformers_reference(path, ckpt.hf_config)
    assert max_tensor_diff(ckpt.tensors, reference) == 0.0
    assert max_tensor_diff(ckpt.tensors, _state(model)) == 0.0
    expected = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128, "n_inner": 160, "vocab_size": 96}
    assert {key: ckpt.hf_config[key] for key in expected} == expected


# --------------------------------------------------------------------------------------------------
# Gemma 2 / Gemma 3, written as llama.cpp's Gemma2Model / Gemma3Model converters write them: every
# "*norm.weight" stored as 1 + w, no lm_head, no Q/K permutation, a sentencepiece vocabulary. Loaded into
# our decoder, the logits must match transformers' on the HF model the file was written from.

# A sentencepiece vocabulary in Gemma's layout: <pad> <eos> <bos> <unk> <mask> first, the turn markers as
# control tokens, byte fallback, then pieces (merges are derived from their order, as for real Gemma files).
_T = gguf.TokenType
GEMMA_SPECIALS = [
    ("<pad>", _T.CONTROL),
    ("<eos>", _T.CONTROL),
    ("<bos>", _T.CONTROL),
    ("<unk>", _T.UNKNOWN),
    ("<mask>", _T.CONTROL),
    ("<start_of_turn>", _T.CONTROL),
    ("<end_of_turn>", _T.CONTROL),
]
GEMMA_PIECES = [
    "▁", "\n", "h", "e", "l", "o", "w", "r", "d", "u", "s", "m", "c", "a", "f", "i", "?", "he", "ll", "llo",
    "hello", "▁w", "or", "▁wor", "ld", "▁world", "us", "er", "user", "mo", "de", "mode", "model", "▁h",
    "▁he", "▁hello", "hi",
]  # fmt: skip
GEMMA_TOKENS = [token for token, _ in GEMMA_SPECIALS] + [f"<0x{b:02X}>" for b in range(256)] + GEMMA_PIECES
GEMMA_TOKEN_TYPES = [kind for _, kind in GEMMA_SPECIALS] + [_T.BYTE] * 256 + [_T.NORMAL] * len(GEMMA_PIECES)
GEMMA_VOCAB = len(GEMMA_TOKENS)
# Gemma's chat template in miniature: the template writes <bos>, the system role is refused.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _write_gemma_vocabulary(writer: gguf.GGUFWriter) -> None:
    """What the converter's _set_vocab_sentencepiece and Gemma's add_add_space_prefix(False) write."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(GEMMA_TOKENS)
    writer.add_token_scores(
        [0.0] * len(GEMMA_SPECIALS) + [-float(i) for i in range(GEMMA_VOCAB - len(GEMMA_SPECIALS))]
    )
    writer.add_token_types(GEMMA_TOKEN_TYPES)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(GEMMA_TEMPLATE)


def _describe_gemma(config: transformers.PretrainedConfig) -> Callable[[gguf.GGUFWriter], None]:
    """The metadata convert_hf_to_gguf.py writes for Gemma 2 (its own list) and Gemma 3 (the generic list
    plus its own): no rope base for Gemma 2; no query_pre_attn_scalar, layer pattern or local base."""

    def describe(writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_sliding_window(config.sliding_window)
        if config.model_type == "gemma2":
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        else:
            full = config.rope_parameters["full_attention"]
            writer.add_rope_freq_base(full["rope_theta"])
            if full["rope_type"] == "linear":
                writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                writer.add_rope_scaling_factor(full["factor"])
        _write_gemma_vocabulary(writer)

    return describe


def _gemma_norms(name: str, weights: np.ndarray) -> np.ndarray:
    """The converter's modify_tensors: transformers computes x * (1 + w), llama.cpp x * w."""
    return weights + 1 if name.endswith("norm.weight") else weights


def _gemma_file(
    tmp_path: Path, config: transformers.PretrainedConfig
) -> tuple[Path, transformers.PreTrainedModel]:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # weights large enough that a wrong norm, scale or cap shows in the logits
        for name, param in model.named_parameters():
            param.copy_((0.2 if name.endswith("norm.weight") else 0.15) * torch.randn_like(param))
    arch = {"gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3_text": gguf.MODEL_ARCH.GEMMA3}[config.model_type]
    path = tmp_path / f"tiny-{config.model_type}.gguf"
    write_gguf(path, model, arch, _describe_gemma(config), _gemma_norms)
    return path, model


def _gemma_logits_diff(path: Path, model: transformers.PreTrainedModel) -> float:
    """Largest |logit difference| between our decoder loaded from `path` and transformers on `model`,
    over three left-padded rows of 12 tokens (longer than the sliding window)."""
    loaded = load_model(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(len(GEMMA_SPECIALS), GEMMA_VOCAB, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids, dtype=bool)
    mask[1, :3] = mask[2, :7] = False
    ids[~mask] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
    got, _ = loaded.model(jnp.asarray(ids), mask=jnp.asarray(mask))
    assert np.abs(expected).max() > 0.5, "weights too small for a meaningful comparison"
    return float(np.abs(np.asarray(got) - expected)[mask].max())


def _check_gemma_tensors(path: Path, model: transformers.PreTrainedModel) -> GGUFCheckpoint:
    """Tensors: equal to transformers' own GGUF loader, and to the HF model's up to the +1/-1 rounding."""
    ckpt = load_gguf(path)
    _, reference = transformers_reference(path, ckpt.hf_config)
    assert max_tensor_diff(ckpt.tensors, reference) == 0.0
    assert max_tensor_diff(ckpt.tensors, _state(model)) < 1e-7
    assert "lm_head.weight" not in ckpt.tensors and ckpt.hf_config["tie_word_embeddings"] is True
    return ckpt


def test_synthetic_gemma2_logits_match_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 2: both soft-caps set low enough to bend the logits, sliding and full layers alternating with a
    window shorter than the rows, sandwich norms, GQA."""
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    config = transformers.Gemma2Config(
        vocab_size=GEMMA_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=5, attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    path, model = _gemma_file(tmp_path, config)
    ckpt = _check_gemma_tensors(path, model)
    hf_config = ckpt.hf_config
    assert hf_config["layer_types"] == ["sliding_attention", "full_attention"] * 2
    expected = {"sliding_window": 5, "attn_logit_softcapping": 3.0, "final_logit_softcapping": 4.0}
    assert {key: hf_config[key] for key in expected} == expected
    assert hf_config["query_pre_attn_scalar"] == 16 and hf_config["rope_theta"] == 10000.0
    assert _gemma_logits_diff(path, model) < 1e-5


def test_synthetic_gemma3_logits_match_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3: q/k norms (also stored + 1), five sliding layers then a full one (llama.cpp's fixed
    pattern), the sliding layers at base 10000 (llama.cpp's fixed local base), the full ones at their own
    base with linear scaling."""
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    config = transformers.Gemma3TextConfig(
        vocab_size=GEMMA_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=5, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 4.0},
        },
    )  # fmt: skip
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    path, model = _gemma_file(tmp_path, config)
    ckpt = _check_gemma_tensors(path, model)
    hf_config = ckpt.hf_config
    assert hf_config["model_type"] == "gemma3_text" and hf_config["layer_types"] == config.layer_types
    assert hf_config["rope_theta"] == 1000.0 and hf_config["rope_local_base_freq"] == 10000.0
    assert hf_config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert hf_config["attn_logit_softcapping"] is None and hf_config["final_logit_softcapping"] is None
    assert "model.layers.0.self_attn.q_norm.weight" in ckpt.tensors
    assert _gemma_logits_diff(path, model) < 1e-5


def _gemma_config_file(path: Path, arch: str, layers: int, extra: Callable[[gguf.GGUFWriter], None]) -> Path:
    """Metadata and the two tensors the config is read from (hidden 32, 2 heads of 8): enough for
    `load_gguf`'s config, not for a model."""
    writer = gguf.GGUFWriter(str(path), arch)
    for add, value in [
        (writer.add_context_length, 64), (writer.add_embedding_length, 32), (writer.add_block_count, layers),
        (writer.add_feed_forward_length, 48), (writer.add_head_count, 2), (writer.add_head_count_kv, 1),
        (writer.add_layer_norm_rms_eps, 1e-6), (writer.add_key_length, 8), (writer.add_value_length, 8),
        (writer.add_sliding_window, 4),
    ]:  # fmt: skip
        add(value)
    extra(writer)
    writer.add_tensor("token_embd.weight", np.zeros((GEMMA_VOCAB, 32), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((16, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("arch", "layers", "scalar"),
    [("gemma2", 46, 16), ("gemma2", 26, 8), ("gemma3", 62, 16), ("gemma3", 34, 8)],
    ids=["gemma2-27b", "gemma2-2b", "gemma3-27b", "gemma3-4b"],
)
def test_gemma_attention_scale_and_layer_pattern_as_llama_cpp(
    arch: str, layers: int, scalar: int, tmp_path: Path
) -> None:
    """Not in the file, fixed by llama.cpp: the 27B models (46 / 62 layers) scale queries by
    (hidden / heads) ** -0.5 (here 32 / 2 = 16), the others by head_dim ** -0.5 (8); every 2nd (Gemma 2)
    or 6th (Gemma 3) layer attends fully."""
    path = _gemma_config_file(tmp_path / f"{arch}.gguf", arch, layers, lambda writer: None)
    config = ModelConfig.from_hf_config(load_gguf(path).hf_config)
    assert config.attn_scale == pytest.approx(scalar**-0.5)
    every = 2 if arch == "gemma2" else 6
    assert config.sliding_windows == tuple(0 if (i + 1) % every == 0 else 4 for i in range(layers))
    assert config.rope_local_theta == (10000.0 if arch == "gemma3" else None)


@pytest.mark.parametrize(
    ("key", "write"),
    [
        ("attention.sliding_window_pattern", lambda writer: writer.add_sliding_window_pattern(4)),
        ("rope.freq_base_swa", lambda writer: writer.add_rope_freq_base_swa(20000.0)),
    ],
)
def test_gemma3_keys_llama_cpp_would_ignore_are_refused(
    key: str, write: Callable[[gguf.GGUFWriter], None], tmp_path: Path
) -> None:
    """llama.cpp runs Gemma 3 with its fixed pattern and local base whatever such keys say; one that
    disagrees is an error, one that agrees is fine."""
    path = _gemma_config_file(tmp_path / "gemma3.gguf", "gemma3", 26, write)
    with pytest.raises(CheckpointError, match=rf"gemma3\.{re.escape(key)} is .* llama\.cpp runs gemma3 with"):
        load_gguf(path)
    agreeing = {"attention.sliding_window_pattern": lambda w: w.add_sliding_window_pattern(6)}.get(
        key, lambda w: w.add_rope_freq_base_swa(10000.0)
    )
    assert load_gguf(_gemma_config_file(tmp_path / "ok.gguf", "gemma3", 26, agreeing)).hf_config


@pytest.mark.parametrize("reader", ["transformers", "metadata"])
def test_synthetic_gemma_tokenizer(reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Gemma file's sentencepiece vocabulary, through transformers' GGUF reader (torch installs) and
    ours (no torch): BOS added as the file says, no prefix space, byte fallback, turn markers kept whole
    and stopping generation, the chat template's own <bos> not doubled."""
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    if reader == "metadata":
        monkeypatch.setattr(gguf_module, "_transformers_reads_gguf", lambda: False)
    path = _gemma_config_file(tmp_path / "gemma2.gguf", "gemma2", 2, _write_gemma_vocabulary)
    tokenizer = Tokenizer(load_gguf_tokenizer(path))

    def pieces(text: str, chat_formatted: bool = False) -> list[str]:
        return tokenizer.hf.convert_ids_to_tokens(tokenizer.encode(text, chat_formatted))

    assert pieces("hello world") == ["<bos>", "hello", "▁world"]
    assert pieces(" hello\nworld?") == ["<bos>", "▁hello", "\n", "w", "or", "ld", "?"]
    assert pieces("café") == ["<bos>", "c", "a", "f", "<0xC3>", "<0xA9>"]
    assert tokenizer.decode(tokenizer.encode("café hello")) == "café hello"
    prompt = tokenizer.format("hi")
    assert prompt == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    turn = ["<start_of_turn>", "user", "\n", "hi", "<end_of_turn>", "\n"]
    assert pieces(prompt, chat_formatted=True) == ["<bos>", *turn, "<start_of_turn>", "model", "\n"]
    assert tokenizer.stop_ids == (1, 6)  # <eos>, <end_of_turn>
    assert tokenizer.pad_id == 0 and tokenizer.vocab_size == GEMMA_VOCAB
    assert sorted(tokenizer.hf.all_special_ids) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# Files we cannot use: one clear error each, never a numpy/struct traceback.


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_gguf(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_gguf_tokenizer(path)


def _truncated_copy(source: Path, target: Path, fraction: float) -> Path:
    with source.open("rb") as f:
        target.write_bytes(f.read(int(source.stat().st_size * fraction)))
    return target


def _file_with(target: Path, data: bytes) -> Path:
    target.write_bytes(data)
    return target


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda src, tmp: _file_with(tmp / "garbage.gguf", os.urandom(4096)), id="not-gguf"),
        pytest.param(lambda src, tmp: _file_with(tmp / "empty.gguf", b""), id="empty"),
        pytest.param(
            lambda src, tmp: _truncated_copy(src, tmp / "head.gguf", 0.005), id="truncated-metadata"
        ),
        pytest.param(lambda src, tmp: _truncated_copy(src, tmp / "half.gguf", 0.5), id="truncated-tensors"),
    ],
)
def test_unreadable_files(make: Callable[[Path, Path], Path], smollm_gguf: Path, tmp_path: Path) -> None:
    path = make(smollm_gguf, tmp_path)
    with pytest.raises(CheckpointError, match="not a readable GGUF file") as info:
        load_gguf(path)
    assert str(path) in str(info.value)


def test_tokenizer_of_unreadable_file(tmp_path: Path) -> None:
    path = _file_with(tmp_path / "garbage.gguf", b"GGUF" + os.urandom(4092))
    with pytest.raises(CheckpointError, match="not a readable GGUF file") as info:
        load_gguf_tokenizer(path)
    assert str(path) in str(info.value)


def _tiny_file(
    path: Path,
    arch: str,
    tensor_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    shards: int = 1,
) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    if shards > 1:
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, shards)
    if tensor_type == gguf.GGMLQuantizationType.F32:
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    else:
        block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
        raw = np.zeros((4, 32 // block_size * type_size), np.uint8)
        writer.add_tensor("token_embd.weight", raw, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_architecture(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path / "mamba.gguf", "mamba")
    with pytest.raises(CheckpointError, match=r"architecture 'mamba' is not supported.*Hugging Face") as info:
        load_gguf(path)
    assert str(path) in str(info.value)
    assert "(supported: gemma2, gemma3, gpt2, llama, qwen2, qwen3)" in str(info.value)


def test_quantisation_without_dequantiser(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path / "q8_1.gguf", "llama", gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(CheckpointError, match=r"Q8_1, which gguf .* cannot dequantise; re-export") as info:
        load_gguf(path)
    assert str(path) in str(info.value)


def test_split_file(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path / "model-00001-of-00002.gguf", "llama", shards=2)
    with pytest.raises(CheckpointError, match=r"one of 2 shards .*llama-gguf-split --merge"):
        load_gguf(path)


def test_unknown_tensors_are_an_error(tmp_path: Path) -> None:
    """A tensor we have no HF name for (here a mixture-of-experts one) must not be dropped silently."""
    config = transformers.Qwen3Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = transformers.Qwen3ForCausalLM(config)
    path = tmp_path / "moe.gguf"
    extra = {"blk.0.ffn_gate_exps.weight": np.zeros((4, 96, 64), np.float32)}
    write_gguf(path, model, gguf.MODEL_ARCH.QWEN3, _describe_decoder(config), extra=extra)
    with pytest.raises(
        CheckpointError, match=r"1 tensors have no Qwen3ForCausalLM counterpart .*ffn_gate_exps"
    ):
        load_gguf(path)
