"""A config's local model path that this machine lacks falls back to its `model.hub_id`, in one line.

The quickstart names the SmolLM2 GGUF in ../shared; on a clone without it, the same model comes from the
hub. Only the download is replaced here (`huggingface_hub.snapshot_download` returns a folder holding a
small random llama with SmolLM2's tokenizer); the config, validation and the loading path are the real ones.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import huggingface_hub
import pytest

from rlvr_jax.config import ConfigError, validate, with_hub_fallback
from tests.conftest import REPO

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def quickstart(preset: str = "tiny"):
    spec = importlib.util.spec_from_file_location("quickstart_config", REPO / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


@pytest.fixture(scope="module")
def tiny_smollm(tmp_path_factory, smollm_gguf) -> Path:
    """A 2-layer random llama with SmolLM2's vocabulary, tokenizer and chat template, as an HF folder."""
    from rlvr_jax.models import ModelConfig
    from rlvr_jax.weights import export_hf
    from rlvr_jax.weights.loader import load_tokenizer
    from tests.tiny import numpy_model

    tokenizer = load_tokenizer(smollm_gguf)
    cfg = ModelConfig(
        family="llama", vocab_size=49152, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, intermediate_size=64, tie_word_embeddings=True, eos_token_ids=tokenizer.stop_ids[:1],
    )  # fmt: skip
    return export_hf(numpy_model(cfg, 0.02), tmp_path_factory.mktemp("tiny_smollm"), tokenizer)


def test_the_quickstart_loads_its_hub_id_when_the_local_file_is_missing(
    tmp_path, monkeypatch, capsys, tiny_smollm
):
    from rlvr_jax.evaluation.evaluate import load_for_eval

    monkeypatch.setenv("RLVR_SHARED", str(tmp_path / "no_shared"))
    config = quickstart()
    missing = tmp_path / "no_shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert config.model.path == str(missing) and config.model.hub_id == HUB_ID
    validate(config)  # a missing path with a hub id is a config that can run

    resolved = with_hub_fallback(config)
    assert capsys.readouterr().err == f"model.path {missing} not found; using hub id {HUB_ID}\n"
    assert resolved.model.path == HUB_ID and config.model.path == str(missing)  # the caller's is kept

    downloads = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        downloads.append(repo_id)
        return str(tiny_smollm)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model, tokenizer, source = load_for_eval(resolved)
    assert downloads == [HUB_ID]
    assert source == {"model": HUB_ID}
    assert model.cfg.num_layers == 2 and model.cfg.vocab_size == 49152
    assert "<|im_start|>" in tokenizer.format("Hi", chat=True)  # SmolLM2's chat template came along


def test_an_existing_path_or_a_hub_id_is_used_as_it_is(smollm_gguf, capsys):
    config = quickstart()
    config.model.path = str(smollm_gguf)
    assert with_hub_fallback(config) is config
    config.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    assert with_hub_fallback(config) is config
    assert capsys.readouterr().err == ""


def test_a_missing_path_without_a_hub_id_says_what_to_set(tmp_path):
    config = quickstart()
    config.model.path = str(tmp_path / "missing.gguf")
    config.model.hub_id = None
    with pytest.raises(ConfigError, match=r"missing\.gguf' does not exist; .*set model\.hub_id"):
        validate(config)
    assert with_hub_fallback(config) is config  # nothing to fall back to: loading names the path
