"""Checkpoint entry point: source detection, bad inputs with clear messages, GGUF -> HF round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax.models import ModelConfig, abstract_model, init_model
from rlvr_jax.weights import CheckpointError, load_model, source_kind
from rlvr_jax.weights.loader import params_to_model
from tests.conftest import REPO
from tests.hf_reference import transformers_gguf_model

TINY = {
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "eos_token_id": 1,
}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    # The tests' persistent compilation cache: the CLI's sampler for the Paris prompt is the program
    # tests/test_generate_real.py compiles, so whichever runs second loads it instead of compiling (~35 s).
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )


def _tiny_dir(tmp_path, config=TINY, tensors=None):
    """A tiny llama HF directory written by our own exporter (no torch)."""
    from rlvr_jax.weights.hf import params_to_tensors, write_safetensors
    from rlvr_jax.weights.loader import model_to_params

    cfg = ModelConfig.from_hf_config(config)
    tensors = tensors or params_to_tensors(cfg, model_to_params(init_model(cfg)))
    write_safetensors(tensors, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path, tensors


def test_source_kinds(tmp_path, smollm_gguf):
    assert source_kind(smollm_gguf) == "gguf"
    d, _ = _tiny_dir(tmp_path)
    assert source_kind(d) == "hf_dir"
    assert source_kind("Qwen/Qwen2.5-0.5B-Instruct") == "hub"
    assert source_kind("gpt2") == "hub"


def test_missing_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("./no/such/model.gguf")


def test_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a GGUF model"):
        load_model(bad)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"without config\.json"):
        load_model(tmp_path)


def test_unknown_architecture(tmp_path):
    d, _ = _tiny_dir(tmp_path)
    (d / "config.json").write_text(json.dumps({**TINY, "model_type": "mamba"}))
    with pytest.raises(ValueError, match="unsupported architecture model_type='mamba'"):
        load_model(d, with_tokenizer=False)


def test_weights_that_disagree_with_the_config(tmp_path):
    d, _ = _tiny_dir(tmp_path)
    (d / "config.json").write_text(json.dumps({**TINY, "hidden_size": 32}))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(d, with_tokenizer=False)


def test_missing_and_extra_layers_are_named(tmp_path):
    d, _ = _tiny_dir(tmp_path)
    (d / "config.json").write_text(json.dumps({**TINY, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.2\..*' is missing"):
        load_model(d, with_tokenizer=False)
    (d / "config.json").write_text(json.dumps({**TINY, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match="not used by a llama model with 1 layers"):
        load_model(d, with_tokenizer=False)


def test_truncated_safetensors(tmp_path):
    d, _ = _tiny_dir(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(d, with_tokenizer=False)


def test_hub_id_while_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"offline.*local directory"):
        load_model("some-org/some-model-that-is-not-cached")


def test_sharded_checkpoint_with_index(tmp_path):
    from rlvr_jax.weights.hf import write_safetensors

    d, tensors = _tiny_dir(tmp_path / "a")
    sharded = tmp_path / "b"
    write_safetensors(tensors, sharded, max_shard_bytes=4000)
    (sharded / "config.json").write_text(json.dumps(TINY))
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    a = load_model(d, with_tokenizer=False).model
    b = load_model(sharded, with_tokenizer=False).model
    tokens = np.arange(10, dtype=np.int32)[None]
    np.testing.assert_array_equal(np.asarray(a(tokens)[0]), np.asarray(b(tokens)[0]))


def test_every_parameter_has_logical_axis_names():
    from flax import nnx

    for family in ("gpt2", "qwen3"):
        hf = {**TINY, "model_type": family, "n_embd": 16, "n_layer": 2, "n_head": 2}
        model = abstract_model(ModelConfig.from_hf_config(hf))
        for path, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param):
                axes = var.get_metadata()["axes"]
                assert len(axes) == len(var.shape), (path, axes, var.shape)


def test_bf16_compute_tracks_fp32(tmp_path):
    d, _ = _tiny_dir(tmp_path)
    f32 = load_model(d, with_tokenizer=False)
    b16 = load_model(d, dtype="bfloat16", with_tokenizer=False)
    assert b16.model.embed[...].dtype == np.dtype("bfloat16")
    tokens = np.arange(12, dtype=np.int32)[None]
    a, b = np.asarray(f32.model(tokens)[0]), np.asarray(b16.model(tokens)[0])
    assert b.dtype == np.float32  # logits are always float32
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-3


def test_params_to_model_rejects_wrong_shapes():
    cfg = ModelConfig.from_hf_config(TINY)
    from rlvr_jax.weights.loader import model_to_params

    params = model_to_params(init_model(cfg))
    params["layers"]["q"] = params["layers"]["q"][:, :, :1]
    with pytest.raises(CheckpointError, match=r"layers\.q has shape"):
        params_to_model(cfg, params)


def test_gguf_to_hf_round_trip_through_convert_cli(tmp_path, smollm_gguf):
    out = tmp_path / "smollm2"
    proc = _run("convert.py", "--input", str(smollm_gguf), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name

    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids).logits.numpy()
    # The round trip is lossless: transformers on our export equals transformers on the GGUF itself.
    original = transformers_gguf_model(smollm_gguf)
    with torch.no_grad():
        np.testing.assert_array_equal(original(ids).logits.numpy(), expected)
    # Ours against transformers. This real model's residual stream reaches |h| ~ 2.5e4 and its logits
    # ~38, so both fp32 implementations carry ~1e-4 of rounding noise: measured against a float64 run of
    # our model, our fp32 logits are off by 1.1e-4 and transformers' by 0.7e-4 (docs/numerics notes).
    ours = load_model(smollm_gguf)
    got = np.asarray(ours.model(ids.numpy().astype(np.int32))[0])
    diff = np.abs(got - expected).max()
    assert diff < 2e-4 and diff / np.abs(expected).max() < 1e-5, f"max |logits diff| = {diff}"
    # The exported tokenizer keeps the GGUF's chat template and encodes identically.
    assert ours.tokenizer.encode(text, chat_formatted=True) == ids[0].tolist()

    # And the exported directory loads back into our framework with identical weights.
    again = load_model(out)
    np.testing.assert_array_equal(np.asarray(again.model.embed[...]), np.asarray(ours.model.embed[...]))

    proc = _run("convert.py", "--input", str(smollm_gguf), "--output", str(out))
    assert proc.returncode == 2 and "not empty" in proc.stderr


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_an_exported_folder_s_tokenizer_is_the_one_autotokenizer_loads(tmp_path, smollm_gguf, family):
    """A model folder our exporter wrote (a run's export, the tests' tiny models) names the generic
    TokenizersBackend class. For a llama folder load_tokenizer loads that class without AutoTokenizer's
    module, which imports torch (4-5 s at every start of train.py or a server on such a folder);
    AutoTokenizer gives a qwen2 folder Qwen2Tokenizer instead, so that one goes through AutoTokenizer.
    Either way it is what AutoTokenizer gives for the folder: class, ids, text, chat template, special
    tokens and stop ids."""
    from rlvr_jax.weights import export_hf
    from rlvr_jax.weights.loader import load_tokenizer

    cfg = ModelConfig(family=family, vocab_size=49152, hidden_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=8, intermediate_size=32, tie_word_embeddings=True,
                      qkv_bias=family == "qwen2")  # fmt: skip
    folder = export_hf(init_model(cfg, seed=0), tmp_path / "export", load_tokenizer(smollm_gguf))
    declared = json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert declared == "TokenizersBackend"
    probes = ["Hello world! 12 + 30 = 42, naïve café.", "  two  spaces\n\n\tand a tab", "日本語 🙂",
              "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", ""]  # fmt: skip
    code = (
        "import json, sys\n"
        "from rlvr_jax.weights.loader import load_tokenizer\n"
        f"wrapped = load_tokenizer({str(folder)!r})\n"
        "tok = wrapped.hf\n"
        f"ids = [tok(text)['input_ids'] for text in {probes!r}]\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'class': type(tok).__name__, 'ids': ids,\n"
        "    'text': [tok.decode(i) for i in ids], 'template': tok.chat_template, 'size': len(tok),\n"
        "    'stop': list(wrapped.stop_ids),\n"
        "    'special': [getattr(tok, n) for n in ('bos_token_id', 'eos_token_id', 'pad_token_id',\n"
        "                                           'unk_token_id', 'all_special_ids')]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert got["class"] == type(reference).__name__ == {"llama": declared, "qwen2": "Qwen2Tokenizer"}[family]
    if family == "llama":
        assert got["torch"] is False, "loading an exported llama folder's tokenizer imported torch"
    assert got["ids"] == [reference(text)["input_ids"] for text in probes]
    assert got["text"] == [reference.decode(ids) for ids in got["ids"]]
    assert got["template"] == reference.chat_template and got["size"] == len(reference)
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids")
    assert got["special"] == [getattr(reference, name) for name in names]
    from rlvr_jax.models.tokenizer import Tokenizer, generation_eos

    assert got["stop"] == list(Tokenizer(reference, None, extra_eos=generation_eos(folder)).stop_ids)


def test_generate_cli_answers_paris(smollm_gguf):
    proc = _run(
        "generate.py",
        "--model",
        str(smollm_gguf),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max_new_tokens",
        "16",
        "--temperature",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_generate_cli_bad_model_path_prints_one_line():
    proc = _run("generate.py", "--model", "./missing.gguf", "--prompt", "hi")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model path './missing.gguf' does not exist")
    assert "Traceback" not in proc.stderr


class FakeHfApi:
    """huggingface_hub.HfApi at the network boundary (nothing here reaches the hub): records each call and
    which files the folder held when upload_folder was called."""

    calls: ClassVar[list[tuple]] = []

    def __init__(self, token: str | None = None, **_: object) -> None:
        self.calls.append(("init", token))

    def create_repo(self, repo_id: str, **kwargs: object) -> str:
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs: object) -> None:
        files = sorted(p.name for p in Path(str(kwargs["folder_path"])).iterdir())
        self.calls.append(("upload_folder", kwargs, files))


def _convert_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_script", REPO / "scripts" / "convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_convert_cli_pushes_the_export_to_the_hub(tmp_path, monkeypatch, capsys, smollm_gguf):
    import huggingface_hub

    from rlvr_jax.models import init_model
    from rlvr_jax.weights import export_hf
    from rlvr_jax.weights.loader import load_tokenizer

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    tokenizer = load_tokenizer(smollm_gguf)  # a tiny random model with a real tokenizer, as a run exports
    cfg = ModelConfig(family="llama", vocab_size=49152, hidden_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=8, intermediate_size=32, tie_word_embeddings=True)  # fmt: skip
    source = export_hf(init_model(cfg, seed=0), tmp_path / "hf_export", tokenizer)
    out = tmp_path / "export"
    main = _convert_main()
    argv = ["--input", str(source), "--output", str(out), "--dtype", "bfloat16",
            "--push_to_hub", "me/tiny-grpo", "--private"]  # fmt: skip
    assert main(argv) == 0
    init, create, upload = FakeHfApi.calls
    assert init == ("init", "hf_from_the_environment")
    options = {"private": True, "repo_type": "model", "exist_ok": True}
    assert create == ("create_repo", "me/tiny-grpo", options)
    kwargs, files = upload[1], upload[2]
    assert kwargs["repo_id"] == "me/tiny-grpo" and kwargs["folder_path"] == str(out)
    assert kwargs["repo_type"] == "model" and {"config.json", "model.safetensors"} <= set(files)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert f"pushed {out} to https://huggingface.co/me/tiny-grpo" in capsys.readouterr().out


def test_convert_cli_push_mistakes_fail_before_converting(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from rlvr_jax.cli import fail_cleanly

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    main, out = _convert_main(), tmp_path / "export"
    push = ["--input", "missing.gguf", "--output", str(out), "--push_to_hub"]
    assert fail_cleanly(lambda: main([*push, "me/model"])) == 2
    assert "needs a token with write access: set HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert fail_cleanly(lambda: main([*push, "me/bad name"])) == 2
    assert "'me/bad name' is not a hub repository id: use owner/name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", "missing.gguf", "--output", str(out), "--private"])
    assert "--private applies to --push_to_hub" in capsys.readouterr().err
    assert not out.exists() and FakeHfApi.calls == []  # nothing converted, nothing sent

    from rlvr_jax.weights.hub import HubError, push_to_hub

    with pytest.raises(HubError, match=r"has no config\.json"):
        push_to_hub(tmp_path, "me/model")

    class Unreachable(FakeHfApi):
        def create_repo(self, repo_id: str, **kwargs: object) -> str:
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HubError, match=r"failed \(ConnectionError: Name or service not known\); the folder"):
        push_to_hub(tmp_path, "me/model")
