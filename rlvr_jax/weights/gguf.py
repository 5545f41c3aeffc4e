"""Read llama.cpp GGUF files as if they were Hugging Face checkpoints.

The rest of the framework knows one checkpoint format: a transformers ``config.json`` dict plus
torch-layout tensors under transformers' parameter names.  Turning a GGUF file into exactly that
(rather than into Flax params directly) lets a single HF -> Flax mapping serve both sources, and
lets tests compare us tensor-for-tensor with transformers' own GGUF loader.

What has to be undone on the way:

* quantisation: every tensor is dequantised to float32 with ``gguf.quants.dequantize``;
* names: GGUF's ``blk.N.attn_q.weight`` style becomes ``model.layers.N.self_attn.q_proj.weight``;
* layouts: GGUF lists dimensions fastest-first, so the reversed GGUF shape is the numpy/torch
  shape.  GPT-2's ``Conv1D`` weights were transposed to ``[out, in]`` by the converter and are
  transposed back;
* rotary layout: for ``llama``-architecture files llama.cpp's ``convert_hf_to_gguf.py`` reorders
  the rows of each Q/K head (weights and biases) from HF's "two halves" rotary layout to
  interleaved pairs, because llama.cpp applies "normal" (GPT-J style) RoPE to that architecture.
  Qwen2/Qwen3 run with NeoX-style RoPE in llama.cpp, which is HF's layout, so their rows are
  stored unchanged.  The gguf package carries no per-architecture rope-type table, so this rule
  lives in ``_ARCHS`` and is checked numerically against transformers in ``tests/test_gguf.py``;
* Llama 3.x "llama3" RoPE scaling, which the converter stores only as a ``rope_freqs`` tensor of
  per-frequency divisors; the HF ``rope_scaling`` dict is recovered from it;
* Gemma 2 / Gemma 3 (architectures ``gemma2`` / ``gemma3``, see ``_gemma_config``): the converter
  stores every RMSNorm weight as ``1 + w`` (llama.cpp multiplies by the stored weight, transformers
  by ``1 + w``), so 1 is subtracted again here and the decoder's ``norm_offset`` is applied once.
  Q/K rows are not permuted (llama.cpp runs Gemma with NeoX-style RoPE, HF's layout), and the head
  is tied to the embeddings (the converter drops ``lm_head``). Several hyperparameters are not in
  the file at all but fixed in llama.cpp's loader, and are reproduced as it sets them: the
  attention scale, Gemma 3's sliding-window pattern and its sliding layers' rotary base.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib.util
import json
import logging
import math
import os
import pathlib
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, Keys

from rlvr_jax.weights.hf import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["GGUFCheckpoint", "load_gguf", "load_gguf_tokenizer"]

_REEXPORT_HINT = (
    "re-export the model as F16 or Q8_0 with llama.cpp's convert_hf_to_gguf.py, "
    "or pass a Hugging Face checkpoint directory instead"
)


@dataclasses.dataclass
class GGUFCheckpoint:
    """A GGUF file seen as a Hugging Face checkpoint.

    ``hf_config`` is a transformers ``config.json``-style dict and ``tensors`` maps transformers
    parameter names to float32 arrays in torch layout, so the HF -> Flax mapping applies as is.
    """

    hf_config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    chat_template: str | None
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Arch:
    """How one GGUF architecture maps onto its transformers model class."""

    model_type: str
    hf_class: str
    global_modules: dict[str, str]  # GGUF module name -> HF module name
    layer_prefix: str  # HF prefix of block N, with N appended
    layer_modules: dict[str, str]  # GGUF per-block module name -> HF module name
    permuted_qk: bool = False  # Q/K rows reordered for llama.cpp's "normal" RoPE
    transposed: frozenset[str] = frozenset()  # per-block modules stored [out, in] but HF Conv1D
    norm_plus_one: bool = False  # RMSNorm weights stored as 1 + w (Gemma); HF keeps w


_DECODER_GLOBALS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_DECODER_LAYERS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_QK_NORM_LAYERS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma's norms around each sublayer: llama.cpp's "ffn_norm" is the norm *before* the MLP here
# (transformers' pre_feedforward_layernorm), while Llama's post_attention_layernorm plays that role.
_GEMMA_LAYERS = {
    **{k: v for k, v in _DECODER_LAYERS.items() if not k.endswith("norm")},
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

_ARCHS: dict[str, _Arch] = {
    "llama": _Arch(
        "llama", "LlamaForCausalLM", _DECODER_GLOBALS, "model.layers.", _DECODER_LAYERS, permuted_qk=True
    ),
    "qwen2": _Arch("qwen2", "Qwen2ForCausalLM", _DECODER_GLOBALS, "model.layers.", _DECODER_LAYERS),
    "qwen3": _Arch(
        "qwen3", "Qwen3ForCausalLM", _DECODER_GLOBALS, "model.layers.", _DECODER_LAYERS | _QK_NORM_LAYERS
    ),
    "gemma2": _Arch(
        "gemma2", "Gemma2ForCausalLM", _DECODER_GLOBALS, "model.layers.", _GEMMA_LAYERS, norm_plus_one=True
    ),
    "gemma3": _Arch(
        "gemma3_text",
        "Gemma3ForCausalLM",
        _DECODER_GLOBALS,
        "model.layers.",
        _GEMMA_LAYERS | _QK_NORM_LAYERS,
        norm_plus_one=True,
    ),
    "gpt2": _Arch(
        "gpt2",
        "GPT2LMHeadModel",
        {
            "token_embd": "transformer.wte",
            "position_embd": "transformer.wpe",
            "output_norm": "transformer.ln_f",
            "output": "lm_head",
        },
        "transformer.h.",
        {
            "attn_norm": "ln_1",
            "attn_qkv": "attn.c_attn",
            "attn_output": "attn.c_proj",
            "ffn_norm": "ln_2",
            "ffn_up": "mlp.c_fc",
            "ffn_down": "mlp.c_proj",
        },
        transposed=frozenset({"attn_qkv", "attn_output", "ffn_up", "ffn_down"}),
    ),
}

# Llama 3.x GGUFs carry their RoPE scaling as this tensor (consumed into hf_config, not a weight).
_ROPE_FREQS = "rope_freqs.weight"
# llama.cpp's converter computes the llama3 factors with this original context length.
_LLAMA3_ORIGINAL_CONTEXT = 8192


class _Reader(gguf.GGUFReader):
    """``GGUFReader`` parsing a plain ndarray view of its memory map.

    ``np.memmap`` slicing runs Python-level hooks on every call; the reader slices once per
    tokenizer string (~300k for Qwen), which made parsing 3-4x slower than the same work on a
    plain view.  The view still references the read-only mapping, so nothing is copied.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain_data = value.view(np.ndarray)


_REQUIRED = object()


class _Metadata:
    """Typed access to a file's key/value fields; errors name the file and the key."""

    def __init__(self, reader: gguf.GGUFReader, path: pathlib.Path) -> None:
        self._fields = reader.fields
        self.path = path
        self.arch = ""  # read next; keys that need it are only looked up afterwards
        self.arch = self.get_str(Keys.General.ARCHITECTURE)

    def has(self, key: str) -> bool:
        return key.format(arch=self.arch) in self._fields

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """The value of ``key`` (``{arch}`` filled in); float32 values as their shortest decimal.

        The shortest decimal matters because GGUF stores e.g. ``rms_norm_eps=1e-5`` as float32,
        which reads back as 9.99999974e-06 and would otherwise leak into ``hf_config``.
        """
        name = key.format(arch=self.arch)
        field = self._fields.get(name)
        if field is None:
            if default is _REQUIRED:
                raise CheckpointError(f"{self.path}: GGUF metadata has no {name!r}; {_REEXPORT_HINT}")
            return default
        value = field.contents()
        if field.types == [GGUFValueType.FLOAT32]:
            return float(str(np.float32(value)))
        return value

    def get_int(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        return value if value is None else int(value)

    def get_str(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        return value if value is None else str(value)


def load_gguf(path: str | os.PathLike[str]) -> GGUFCheckpoint:
    """Load a GGUF file as an HF-style config plus float32 torch-layout tensors."""
    path = _existing_file(path)
    reader = _open_reader(path)
    meta = _Metadata(reader, path)
    arch = _arch_for(meta)
    raw = _dequantize_all(reader, path)
    rope_freqs = raw.pop(_ROPE_FREQS, None)
    shapes = {name: array.shape for name, array in raw.items()}
    if arch.model_type == "gpt2":
        config = _gpt2_config(meta, shapes)
    elif arch.norm_plus_one:
        config = _gemma_config(meta, arch, shapes)
    else:
        config = _decoder_config(meta, arch, shapes, rope_freqs)
    tensors = _hf_tensors(arch, raw, config, path)
    return GGUFCheckpoint(
        hf_config=config,
        tensors=tensors,
        chat_template=meta.get_str(Keys.Tokenizer.CHAT_TEMPLATE, None),
        metadata=_summary(meta, reader),
    )


def load_gguf_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The fast tokenizer transformers builds from a GGUF file, with the file's chat template.

    Nothing is written beside the file, so read-only model folders work. transformers' own GGUF path
    (``AutoTokenizer.from_pretrained(..., gguf_file=...)``) imports torch since 5.2x, and the base
    package does not depend on torch: without it, the same converter runs on metadata read by our
    reader (``_tokenizer_from_metadata``). ``tests/test_gguf.py`` checks that both give the same tokens,
    template and special tokens for the SmolLM2 and Qwen2.5 files, and for a Gemma-style sentencepiece
    vocabulary (BOS added as the file says, no prefix space, byte fallback, turn markers kept whole).
    """
    path = _existing_file(path)
    cached = _tokenizer_cache_dir(path)
    if cached is not None and (cached / "tokenizer_config.json").is_file():
        return load_tokenizer_folder(cached)
    try:
        if not _transformers_reads_gguf():
            tokenizer = _tokenizer_from_metadata(path)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
    except Exception as exc:
        _open_reader(path)  # a damaged or non-GGUF file gets the same clear error as load_gguf
        raise CheckpointError(
            f"{path}: transformers could not build a tokenizer from this GGUF file "
            f"({type(exc).__name__}: {exc}); pass a Hugging Face checkpoint directory instead"
        ) from exc
    if tokenizer.chat_template is None:
        meta = _Metadata(_open_reader(path), path)
        tokenizer.chat_template = meta.get_str(Keys.Tokenizer.CHAT_TEMPLATE, None)
    if cached is not None:
        _save_tokenizer_cache(tokenizer, cached)
    return tokenizer


# Model types for which AutoTokenizer keeps a declared TokenizersBackend (others, e.g. qwen2, are mapped
# to their own class by transformers' list of hub configs it distrusts): checked by tests/test_weights.py.
_BACKEND_MODEL_TYPES = frozenset({"llama"})


def load_tokenizer_folder(folder: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a folder (tokenizer.json, tokenizer_config.json), as AutoTokenizer loads it.

    ``AutoTokenizer`` picks the class that ``tokenizer_config.json`` names. When that is the generic
    ``TokenizersBackend`` (what the GGUF converter gives llama-style vocabularies such as SmolLM2's, and
    what ``export_hf`` writes for such a tokenizer), and the folder has no ``config.json`` (the GGUF
    tokenizer cache) or a model type AutoTokenizer keeps that class for, the class is loaded directly:
    the same object, without ``AutoTokenizer``'s module, which imports torch where it is installed
    (4-5 s at every start of a script or server). Everything else goes through ``AutoTokenizer``.
    ``tests/test_gguf.py`` (the GGUF tokenizer cache) and ``tests/test_weights.py`` (exported llama and
    qwen2 folders) check that both routes give the same tokenizer.
    """
    folder = pathlib.Path(folder)
    declared, model_type = _json_object(folder / "tokenizer_config.json"), None
    if (folder / "config.json").exists():
        model_type = _json_object(folder / "config.json").get("model_type", "")
    if (
        declared.get("tokenizer_class") == "TokenizersBackend"
        and "auto_map" not in declared
        and (model_type is None or model_type in _BACKEND_MODEL_TYPES)
    ):
        from transformers import TokenizersBackend

        return TokenizersBackend.from_pretrained(str(folder), local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _json_object(path: pathlib.Path) -> dict[str, Any]:
    """A JSON file's object; {} if it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _transformers_reads_gguf() -> bool:
    """Whether transformers' own GGUF reader can run here (it imports torch)."""
    return importlib.util.find_spec("torch") is not None


# GGUF's tokenizer.ggml.<x>_token_id fields, by the special-token name transformers gives them.
_SPECIAL_TOKEN_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _tokenizer_from_metadata(path: pathlib.Path) -> PreTrainedTokenizerBase:
    """transformers' GGUF tokenizer converter fed by our reader (numpy only), for installs without torch.

    This mirrors what ``get_gguf_tokenizer`` does before it hands over to ``convert_gguf_tokenizer``:
    the ``tokenizer.*`` fields renamed by ``GGUF_TOKENIZER_MAPPING``, BOS added for sentencepiece
    ("llama") vocabularies that do not say otherwise (llama.cpp's rule), and the special tokens named
    by their ids. The vocabulary itself, merges, pre-tokenizer and added tokens are transformers' work.
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    fields = _open_reader(path).fields

    def value(name: str) -> Any:
        field = fields.get(name)
        return None if field is None else field.contents()

    grouped = {
        group: {
            name: value(f"tokenizer.{key}") for key, name in renames.items() if f"tokenizer.{key}" in fields
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocabulary, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if vocabulary.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKEN_IDS.items():
        token_id = value(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = vocabulary["tokens"][token_id] if token_id is not None else None
    architecture = value(Keys.General.ARCHITECTURE)
    backend, extra = convert_gguf_tokenizer(architecture, vocabulary)
    return _tokenizer_class(architecture)(tokenizer_object=backend, **tokenizer_config, **extra)


def _tokenizer_class(architecture: str) -> type[PreTrainedTokenizerBase]:
    """The class transformers' own GGUF path wraps the tokenizer in: its AutoTokenizer class for the model
    type (GemmaTokenizer for Gemma, whose defaults name ``<mask>`` a special token), else the plain fast one.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    arch = _ARCHS.get(architecture)
    name = TOKENIZER_MAPPING_NAMES.get(arch.model_type) if arch is not None else None
    return (tokenizer_class_from_name(name) if name else None) or PreTrainedTokenizerFast


def _tokenizer_cache_dir(path: pathlib.Path) -> pathlib.Path | None:
    """Where the tokenizer converted from this exact file is kept (None: caching off).

    Building a fast tokenizer from a GGUF's vocabulary and merges takes seconds (8 s for SmolLM2, 16 s
    for Qwen2.5); loading the converted tokenizer.json takes a fraction of one. The key covers the
    file's identity (path, size, mtime), the transformers version that did the conversion and which
    reader fed it.
    Set RLVR_CACHE_DIR to move the cache, or to an empty string to turn it off.
    """
    import hashlib

    import transformers

    root = os.environ.get("RLVR_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "rlvr-jax"))
    if not root:
        return None
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    # The metadata reader wraps the tokenizer in transformers' class for the model type since Gemma support.
    ident += "" if _transformers_reads_gguf() else "|metadata|model-class"
    return pathlib.Path(root) / "gguf-tokenizers" / hashlib.sha256(ident.encode()).hexdigest()[:24]


def _save_tokenizer_cache(tokenizer: PreTrainedTokenizerBase, target: pathlib.Path) -> None:
    """Writes the cache atomically (a temporary folder renamed into place); failure only costs speed."""
    import shutil
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        logging.getLogger(__name__).warning("could not cache the GGUF tokenizer in %s: %s", target, exc)


def _existing_file(path: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; pass the .gguf file itself, or load a directory as HF")
    return path


def _open_reader(path: pathlib.Path) -> gguf.GGUFReader:
    """Parse the header, turning the reader's low-level failures into one clear error."""
    try:
        return _Reader(path)
    except OSError:
        raise
    except Exception as exc:  # the reader fails with numpy/struct errors on non-GGUF bytes
        raise CheckpointError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it may be truncated "
            f"or not GGUF at all: download it again, or {_REEXPORT_HINT}"
        ) from exc


def _arch_for(meta: _Metadata) -> _Arch:
    shards = meta.get_int(Keys.Split.LLM_KV_SPLIT_COUNT, 1)
    if shards > 1:
        raise CheckpointError(
            f"{meta.path} is one of {shards} shards of a split GGUF; merge them first with "
            "llama.cpp's `llama-gguf-split --merge FIRST_SHARD OUT.gguf` and load the merged file"
        )
    arch = _ARCHS.get(meta.arch)
    if arch is None:
        raise CheckpointError(
            f"{meta.path}: GGUF architecture {meta.arch!r} is not supported (supported: "
            f"{', '.join(sorted(_ARCHS))}); pass the model's Hugging Face checkpoint directory instead"
        )
    return arch


def _dequantize_all(reader: gguf.GGUFReader, path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor as float32 in numpy layout, keyed by GGUF name.

    Dequantisation is numpy work that mostly releases the GIL, so threads give a real speed-up.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        arrays = pool.map(lambda tensor: _dequantize(tensor, path), reader.tensors)
        return {tensor.name: array for tensor, array in zip(reader.tensors, arrays, strict=True)}


def _dequantize(tensor: gguf.ReaderTensor, path: pathlib.Path) -> np.ndarray:
    qtype = GGMLQuantizationType(tensor.tensor_type)
    shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
    try:
        array = gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError as exc:
        raise CheckpointError(
            f"{path}: tensor {tensor.name!r} uses GGML type {qtype.name}, which gguf "
            f"{_gguf_version()} cannot dequantise; {_REEXPORT_HINT}"
        ) from exc
    except Exception as exc:  # a short or inconsistent data block shows up as numpy errors
        raise CheckpointError(
            f"{path}: tensor {tensor.name!r} ({qtype.name}, shape {shape}) is corrupt or truncated "
            f"({type(exc).__name__}: {exc}); download the file again"
        ) from exc
    if array.size != math.prod(shape):
        raise CheckpointError(
            f"{path}: tensor {tensor.name!r} has {array.size} values, expected shape {shape}"
        )
    return array.reshape(shape)


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def _hf_tensors(
    arch: _Arch, raw: dict[str, np.ndarray], config: dict[str, Any], path: pathlib.Path
) -> dict[str, np.ndarray]:
    """Rename to HF names and restore HF layouts; unknown tensors are an error, not dropped."""
    tensors: dict[str, np.ndarray] = {}
    unknown = []
    for name, array in raw.items():
        hf_name, module = _hf_name(arch, name)
        if hf_name is None:
            unknown.append(name)
            continue
        if arch.permuted_qk and module in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"] if module == "attn_q" else config["num_key_value_heads"]
            if array.shape[0] % (2 * heads):
                raise CheckpointError(f"{path}: {name} has {array.shape[0]} rows, not {heads} rotary heads")
            array = _unpermute_rotary_rows(array, heads)
        elif module in arch.transposed and array.ndim == 2:
            array = array.T
        elif arch.norm_plus_one and hf_name.endswith("norm.weight"):
            # The converter's rule, on the same names: every "*norm.weight" got + 1. F32 subtraction is
            # exact for stored values >= 0.5, i.e. for every w >= -0.5.
            array = np.asarray(array, np.float32) - np.float32(1.0)
        tensors[hf_name] = _owned(array)
    if unknown:
        raise CheckpointError(
            f"{path}: {len(unknown)} tensors have no {arch.hf_class} counterpart (e.g. "
            f"{sorted(unknown)[:5]}); this variant of the architecture (mixture-of-experts, extra "
            "heads, ...) is not supported"
        )
    return tensors


def _owned(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array that can be written and does not pin the file's memory map.

    F32 tensors come back from ``dequantize`` as read-only views of the mapping; quantised ones
    are already fresh arrays and are not copied again.
    """
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array if array.flags.writeable else array.copy()


def _hf_name(arch: _Arch, gguf_name: str) -> tuple[str | None, str]:
    """``(HF name, GGUF module)`` for a GGUF tensor name; the HF name is None when unknown."""
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk":
        _, layer, module, param = parts
        hf_module = arch.layer_modules.get(module)
        return (None if hf_module is None else f"{arch.layer_prefix}{layer}.{hf_module}.{param}"), module
    if len(parts) == 2:
        module, param = parts
        hf_module = arch.global_modules.get(module)
        return (None if hf_module is None else f"{hf_module}.{param}"), module
    return None, gguf_name


def _unpermute_rotary_rows(array: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row order for Q/K (weights ``[out, in]`` and biases ``[out]``).

    HF keeps each head's rotary pairs as (row i, row i + head_dim/2); llama.cpp's converter
    interleaves them to (row 2i, row 2i + 1).  Viewing a head's rows as ``[head_dim/2, 2]`` and
    transposing to ``[2, head_dim/2]`` puts every pair back into the two halves.
    """
    half = array.shape[0] // heads // 2
    return array.reshape(heads, half, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _decoder_config(
    meta: _Metadata, arch: _Arch, shapes: dict[str, tuple[int, ...]], rope_freqs: np.ndarray | None
) -> dict[str, Any]:
    """config.json for the llama/mistral/qwen2/qwen3 family."""
    heads = meta.get_int(Keys.Attention.HEAD_COUNT)
    # Q's row count is authoritative: d/heads is wrong for models like Qwen3-0.6B or Mistral Nemo.
    head_dim = shapes["blk.0.attn_q.weight"][0] // heads
    model_type, hf_class = _model_type(meta, arch)
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_class],
        "vocab_size": shapes["token_embd.weight"][0],
        "hidden_size": meta.get_int(Keys.LLM.EMBEDDING_LENGTH),
        "intermediate_size": meta.get_int(Keys.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": meta.get_int(Keys.LLM.BLOCK_COUNT),
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get_int(Keys.Attention.HEAD_COUNT_KV, heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": meta.get(Keys.Attention.LAYERNORM_RMS_EPS),
        "rope_theta": meta.get(Keys.Rope.FREQ_BASE, 10000.0),
        "max_position_embeddings": meta.get_int(Keys.LLM.CONTEXT_LENGTH),
        "tie_word_embeddings": "output.weight" not in shapes,
    }
    if model_type != "qwen2":  # Qwen2's biases are unconditional, so its config has no flag
        config["attention_bias"] = "blk.0.attn_q.bias" in shapes
    if model_type == "llama":
        config["mlp_bias"] = "blk.0.ffn_up.bias" in shapes
    if model_type == "mistral":
        config["sliding_window"] = None  # llama.cpp keeps no window for llama-architecture files
    rope_scaling = _rope_scaling(meta, rope_freqs, config["rope_theta"], head_dim)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    return config | _common_config(meta)


# What llama.cpp's loader (llama-model.cpp, load_hparams) fixes for Gemma instead of reading it from the
# file: every 2nd (Gemma 2) / 6th (Gemma 3) layer attends fully, the others within the sliding window;
# Gemma 3's sliding layers rotate with base 10000, unscaled. Gemma 2's window and soft-caps have defaults
# for files that leave them out (the converter writes all three).
_GEMMA_FULL_EVERY = {"gemma2": 2, "gemma3_text": 6}
_GEMMA3_LOCAL_THETA = 10000.0
_GEMMA2_DEFAULTS = {"sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
# Layer counts of the 27B models, the one size whose attention scale is not head_dim ** -0.5.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3_text": 62}


def _gemma_config(meta: _Metadata, arch: _Arch, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """config.json for Gemma 2 / Gemma 3 text models, with the hyperparameters llama.cpp runs them with.

    query_pre_attn_scalar is not in the file: llama.cpp derives the attention scale from the model
    size, after gemma_pytorch's configs. The 27B models (told apart by their layer count: 46 for
    Gemma 2, 62 for Gemma 3) scale queries by (hidden / heads) ** -0.5, every other size by
    head_dim ** -0.5. That is query_pre_attn_scalar = hidden // heads or head_dim, the value of every
    released Gemma 2 / 3 checkpoint (27B: 4608 / 32 = 144 and 5376 / 32 = 168; the others: head_dim,
    256); a fine-tune with another value runs with this one in llama.cpp too, and here.
    """
    model_type = arch.model_type
    gemma3 = model_type == "gemma3_text"
    heads = meta.get_int(Keys.Attention.HEAD_COUNT)
    hidden = meta.get_int(Keys.LLM.EMBEDDING_LENGTH)
    layers = meta.get_int(Keys.LLM.BLOCK_COUNT)
    q_rows = shapes["blk.0.attn_q.weight"][0]
    head_dim = meta.get_int(Keys.Attention.KEY_LENGTH, q_rows // heads)
    if q_rows != heads * head_dim:
        raise CheckpointError(
            f"{meta.path}: the Q projection has {q_rows} rows, not {heads} heads of key_length "
            f"{head_dim}; the file is inconsistent"
        )
    defaults = {} if gemma3 else _GEMMA2_DEFAULTS
    window = meta.get_int(Keys.Attention.SLIDING_WINDOW, defaults.get("sliding_window")) or None
    every = _GEMMA_FULL_EVERY[model_type]
    sliding = [bool(window) and i % every < every - 1 for i in range(layers)]
    _check_fixed(meta, Keys.Attention.SLIDING_WINDOW_PATTERN, (every, sliding))
    theta = meta.get(Keys.Rope.FREQ_BASE, 10000.0)
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [arch.hf_class],
        "vocab_size": shapes["token_embd.weight"][0],
        "hidden_size": hidden,
        "intermediate_size": meta.get_int(Keys.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get_int(Keys.Attention.HEAD_COUNT_KV, heads),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": meta.get(Keys.Attention.LAYERNORM_RMS_EPS),
        "rope_theta": theta,
        "max_position_embeddings": meta.get_int(Keys.LLM.CONTEXT_LENGTH),
        "tie_word_embeddings": "output.weight" not in shapes,
        "attention_bias": "blk.0.attn_q.bias" in shapes,
        "query_pre_attn_scalar": hidden // heads if layers == _GEMMA_27B_LAYERS[model_type] else head_dim,
        # Gemma 3 has no attention soft-capping (llama.cpp does not read the key for it).
        "attn_logit_softcapping": None
        if gemma3
        else meta.get(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, defaults["attn_logit_softcapping"]),
        "final_logit_softcapping": meta.get(
            Keys.LLM.FINAL_LOGIT_SOFTCAPPING, defaults.get("final_logit_softcapping")
        ),
        "sliding_window": window,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
    }
    if gemma3:
        _check_fixed(meta, Keys.Rope.FREQ_BASE_SWA, (_GEMMA3_LOCAL_THETA,))
        config["rope_local_base_freq"] = _GEMMA3_LOCAL_THETA
    rope_scaling = _rope_scaling(meta, None, theta, head_dim)
    if rope_scaling is not None:  # Gemma 3 4B and up: linear, on the full-attention layers only
        config["rope_scaling"] = rope_scaling
    return config | _common_config(meta)


def _check_fixed(meta: _Metadata, key: str, llama_cpp: tuple[Any, ...]) -> None:
    """A key llama.cpp does not read for Gemma must not contradict the value it uses instead.

    Either way of loading such a file would be wrong for someone (llama.cpp, or whoever wrote the
    key), so it is refused rather than guessed. ``llama_cpp`` lists the spellings of llama.cpp's
    value (a sliding-window pattern may be a period or a per-layer list).
    """
    if not meta.has(key):
        return
    value = meta.get(key)
    if value in llama_cpp:
        return
    raise CheckpointError(
        f"{meta.path}: {key.format(arch=meta.arch)} is {value!r}, but llama.cpp runs {meta.arch} with "
        f"{llama_cpp[0]!r} whatever the file says; convert the Hugging Face checkpoint again with "
        "llama.cpp's convert_hf_to_gguf.py, or pass the Hugging Face checkpoint directory instead"
    )


def _model_type(meta: _Metadata, arch: _Arch) -> tuple[str, str]:
    """Mistral GGUFs say 'llama'; their general name is the only trace of the HF class."""
    names = (meta.get_str(Keys.General.NAME, "") + " " + meta.get_str(Keys.General.BASENAME, "")).lower()
    if arch.model_type == "llama" and "mistral" in names:
        return "mistral", "MistralForCausalLM"
    return arch.model_type, arch.hf_class


def _gpt2_config(meta: _Metadata, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    context = meta.get_int(Keys.LLM.CONTEXT_LENGTH)
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": shapes["token_embd.weight"][0],
        "n_embd": meta.get_int(Keys.LLM.EMBEDDING_LENGTH),
        "n_layer": meta.get_int(Keys.LLM.BLOCK_COUNT),
        "n_head": meta.get_int(Keys.Attention.HEAD_COUNT),
        "n_inner": meta.get_int(Keys.LLM.FEED_FORWARD_LENGTH, None),
        "n_positions": context,
        "n_ctx": context,
        "layer_norm_epsilon": meta.get(Keys.Attention.LAYERNORM_EPS),
        "activation_function": "gelu_new",
        "tie_word_embeddings": "output.weight" not in shapes,
    }
    return config | _common_config(meta)


def _common_config(meta: _Metadata) -> dict[str, Any]:
    """Special token ids and dtype (both spellings: transformers 5 reads ``dtype``, 4.x ``torch_dtype``)."""
    config: dict[str, Any] = {"dtype": "float32", "torch_dtype": "float32"}
    for key, hf_key in (
        (Keys.Tokenizer.BOS_ID, "bos_token_id"),
        (Keys.Tokenizer.EOS_ID, "eos_token_id"),
        (Keys.Tokenizer.PAD_ID, "pad_token_id"),
    ):
        value = meta.get_int(key, None)
        if value is not None:
            config[hf_key] = value
    return config


def _rope_scaling(
    meta: _Metadata, rope_freqs: np.ndarray | None, theta: float, head_dim: int
) -> dict[str, Any] | None:
    """HF ``rope_scaling`` from the rope.scaling.* keys, or from a Llama 3 ``rope_freqs`` tensor."""
    if rope_freqs is not None:
        return _llama3_rope_scaling(meta, rope_freqs, theta, head_dim)
    kind = meta.get_str(Keys.Rope.SCALING_TYPE, "none")
    if kind == "none":
        return None
    if kind not in ("linear", "yarn"):
        raise CheckpointError(f"{meta.path}: RoPE scaling type {kind!r} is not supported; {_REEXPORT_HINT}")
    scaling: dict[str, Any] = {"rope_type": kind, "factor": meta.get(Keys.Rope.SCALING_FACTOR)}
    for key, hf_key in (
        (Keys.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings"),
        (Keys.Rope.SCALING_YARN_BETA_FAST, "beta_fast"),
        (Keys.Rope.SCALING_YARN_BETA_SLOW, "beta_slow"),
    ):
        if meta.has(key):
            scaling[hf_key] = meta.get(key)
    return scaling


def _llama3_rope_scaling(
    meta: _Metadata, divisors: np.ndarray, theta: float, head_dim: int
) -> dict[str, Any] | None:
    """Recover HF's llama3 ``rope_scaling`` from the per-frequency divisors llama.cpp stores.

    Each divisor is 1 (short wavelengths), ``factor`` (long ones), or ``1 / ((1 - s) / factor + s)``
    in between, where ``s = (C / wavelength - low) / (high - low)`` with ``C`` the original context
    length.  ``s`` is linear in ``C / wavelength``, so two in-between frequencies give ``low`` and
    ``high`` for the ``C`` the converter used; the result is checked by recomputing every divisor.
    """
    divisors = divisors.astype(np.float64).reshape(-1)
    factor = float(divisors.max())
    if np.allclose(divisors, 1.0):
        return None
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    x = _LLAMA3_ORIGINAL_CONTEXT * inv_freq / (2 * math.pi)  # C / wavelength
    between = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    if divisors.shape != inv_freq.shape or between.sum() < 2:
        raise CheckpointError(f"{meta.path}: cannot interpret the rope_freqs tensor as llama3 RoPE scaling")
    smooth = (1 / divisors[between] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(x[between], smooth, 1)
    low = round(-intercept / slope, 4)
    high = round(low + 1 / slope, 4)
    scaling = {
        "rope_type": "llama3",
        "factor": round(factor, 4),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": _LLAMA3_ORIGINAL_CONTEXT,
    }
    if not np.allclose(_llama3_divisors(scaling, x), divisors, rtol=1e-4):
        raise CheckpointError(f"{meta.path}: the rope_freqs tensor does not follow llama3 RoPE scaling")
    return scaling


def _llama3_divisors(scaling: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The divisors llama3 scaling gives at ``x = original_context / wavelength``."""
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    smooth = (x - low) / (high - low)
    between = 1 / ((1 - smooth) / factor + smooth)
    return np.where(x > high, 1.0, np.where(x < low, factor, between))


def _summary(meta: _Metadata, reader: gguf.GGUFReader) -> dict[str, Any]:
    """The raw fields worth keeping for logs and run records."""
    types = collections.Counter(GGMLQuantizationType(t.tensor_type).name for t in reader.tensors)
    summary: dict[str, Any] = {
        "path": str(meta.path),
        "general.architecture": meta.arch,
        "quantization_types": dict(sorted(types.items())),
    }
    for key in (Keys.General.NAME, Keys.General.BASENAME, Keys.General.SIZE_LABEL, Keys.General.FILE_TYPE):
        if meta.has(key):
            summary[key] = meta.get(key)
    if Keys.General.FILE_TYPE in summary:
        summary["file_type_name"] = _file_type_name(summary[Keys.General.FILE_TYPE])
    return summary


def _file_type_name(file_type: int) -> str:
    try:
        return gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"unknown ({file_type})"
