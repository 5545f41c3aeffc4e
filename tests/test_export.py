"""Export: a TF SavedModel (jax2tf) and a jax.export StableHLO artifact decode what the JAX sampler decodes.

Each artifact is loaded the way a deployment loads it (TensorFlow's saved_model.load; jax.export.deserialize
plus the safetensors weights) and its greedy tokens are compared with `Sampler.generate_ids` at
temperature 0, on a tiny random model (early stops, padding, several batch sizes) and on the real
SmolLM2-135M GGUF.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from rlvr_jax.export import ExportSpec, export_stablehlo, load_stablehlo, read_manifest
from rlvr_jax.export.functions import flat_params
from rlvr_jax.export.saved_model import EXTRA, LoadedSavedModel, export_saved_model
from rlvr_jax.export.spec import MANIFEST
from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.models import ModelConfig, init_model
from rlvr_jax.weights import export_hf, load_model
from tests.conftest import REPO
from tests.tiny import TINY

PAD = 0
CFG = TINY.replace(eos_token_ids=(1,), pad_token_id=PAD)
VOCAB = CFG.vocab_size
P, N = 16, 8
SPEC = ExportSpec(prompt_len=P, max_new_tokens=N)  # any batch, cpu + cuda, both signatures


def _sampler_greedy(model, ids, mask, stop_ids):
    tok = types.SimpleNamespace(pad_id=PAD, stop_ids=tuple(stop_ids))
    params = SamplingParams(temperature=0.0, max_new_tokens=N)
    return jax.device_get(Sampler(model, tok).generate_ids(ids, mask.astype(bool), params))


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported only by the tests that load SavedModels (it is large and slow to import)."""
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def tiny():
    """A tiny model, left-padded prompts of 3 lengths (one full), and a stop id that ends a row early."""
    model = init_model(CFG, seed=3)
    model.embed[...] = model.embed[...] * 40.0  # sharp logits: greedy choices are far from ties
    rng = np.random.default_rng(0)
    ids = np.full((3, P), PAD, np.int32)
    mask = np.zeros((3, P), np.int32)
    for row, n in enumerate((4, 9, P)):
        ids[row, P - n :] = rng.integers(2, VOCAB, n)
        mask[row, P - n :] = 1
    # Without a reachable stop every row runs to N; make row 1's third token a stop so it ends early.
    free = _sampler_greedy(model, ids, mask, stop_ids=(VOCAB + 1,))
    stop_ids = (int(free.tokens[1, 2]),)
    reference = _sampler_greedy(model, ids, mask, stop_ids)
    assert reference.lengths[1] <= 3 and reference.finished[1]
    return types.SimpleNamespace(model=model, ids=ids, mask=mask, stop_ids=stop_ids, ref=reference)


@pytest.fixture(scope="module")
def stablehlo_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("stablehlo")
    return export_stablehlo(tiny.model, out, SPEC, stop_ids=tiny.stop_ids, pad_id=PAD, source="tiny")


@pytest.fixture(scope="module")
def saved_model_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved_model") / "tiny" / "1"  # TF Serving's BASE/NAME/VERSION
    return export_saved_model(tiny.model, out, SPEC, stop_ids=tiny.stop_ids, pad_id=PAD, source="tiny")


def _assert_same_generation(out, ref, rows=slice(None)):
    np.testing.assert_array_equal(out["tokens"], ref.tokens[rows])
    np.testing.assert_array_equal(out["lengths"], ref.lengths[rows])
    np.testing.assert_array_equal(out["finished"], ref.finished[rows])
    np.testing.assert_allclose(out["logprobs"], ref.logprobs[rows], atol=1e-5)


def test_stablehlo_artifact_called_with_plain_jax_export_equals_the_sampler(tiny, stablehlo_dir):
    # What a user without this package does: deserialize, load the weights, call.
    exported = jax.export.deserialize(bytearray((stablehlo_dir / "generate.jaxexport").read_bytes()))
    params = load_file(str(stablehlo_dir / "params.safetensors"))
    assert exported.platforms == ("cpu", "cuda")
    assert str(exported.in_avals[-1].shape[0]) == "batch"  # symbolic: any batch size runs
    out = jax.device_get(exported.call(params, tiny.ids, tiny.mask))
    _assert_same_generation(out, tiny.ref)
    assert out["tokens"][1, tiny.ref.lengths[1] :].tolist() == [PAD] * (N - tiny.ref.lengths[1])
    # Another batch size, same artifact: a single row decodes as it did inside the batch.
    single = jax.device_get(exported.call(params, tiny.ids[2:], tiny.mask[2:]))
    _assert_same_generation(single, tiny.ref, rows=slice(2, 3))
    # The weights file holds exactly the model's parameters and is readable by other users.
    expected = flat_params(tiny.model)
    assert sorted(params) == sorted(expected)
    np.testing.assert_array_equal(params["layers.q"], np.asarray(expected["layers.q"]))
    assert (stablehlo_dir / "params.safetensors").stat().st_mode & 0o044 == 0o044


def test_saved_model_loaded_by_tensorflow_equals_the_sampler(tf, tiny, saved_model_dir):
    loaded = tf.saved_model.load(str(saved_model_dir))
    assert set(loaded.signatures) == {"serving_default", "generate", "logits"}
    default = loaded.signatures["serving_default"]
    _, inputs = default.structured_input_signature
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {
        "input_ids": (tf.int32, [None, P]),
        "attention_mask": (tf.int32, [None, P]),
    }
    assert set(default.structured_outputs) == {"tokens", "logprobs", "lengths", "finished"}
    out = default(input_ids=tf.constant(tiny.ids), attention_mask=tf.constant(tiny.mask))
    _assert_same_generation({k: v.numpy() for k, v in out.items()}, tiny.ref)
    single = loaded.signatures["generate"](
        input_ids=tf.constant(tiny.ids[:1]), attention_mask=tf.constant(tiny.mask[:1])
    )
    _assert_same_generation({k: v.numpy() for k, v in single.items()}, tiny.ref, rows=slice(0, 1))


def test_logits_signatures_equal_the_models_forward_pass(tiny, stablehlo_dir, saved_model_dir):
    expected = np.asarray(tiny.model(tiny.ids, mask=tiny.mask.astype(bool))[0])
    from_tf = LoadedSavedModel(saved_model_dir)("logits", tiny.ids, tiny.mask)["logits"]
    from_hlo = load_stablehlo(stablehlo_dir).logits(tiny.ids, tiny.mask)["logits"]
    assert from_tf.shape == from_hlo.shape == (3, P, VOCAB)
    np.testing.assert_allclose(from_tf, expected, atol=1e-5)
    np.testing.assert_allclose(from_hlo, expected, atol=1e-5)


def test_manifests_describe_what_the_artifacts_take_and_return(tf, tiny, stablehlo_dir, saved_model_dir):
    for manifest_path, fmt in (
        (stablehlo_dir / MANIFEST, "stablehlo"),
        (saved_model_dir / EXTRA / MANIFEST, "saved_model"),
    ):
        manifest = read_manifest(manifest_path)
        assert manifest["format"] == fmt
        assert (manifest["pad_id"], manifest["stop_ids"]) == (PAD, list(tiny.stop_ids))
        assert (manifest["prompt_len"], manifest["max_new_tokens"], manifest["batch"]) == (P, N, None)
        generate = manifest["signatures"]["generate"]
        assert generate["inputs"]["input_ids"] == {
            "dtype": "int32",
            "shape": [None, P],
            "doc": "token ids, left padded",
        }
        assert set(generate["outputs"]) == {"tokens", "logprobs", "lengths", "finished"}
        assert manifest["signatures"]["logits"]["outputs"]["logits"]["shape"] == [None, P, VOCAB]
    assert read_manifest(saved_model_dir / EXTRA / MANIFEST)["tensorflow_version"] == tf.__version__
    # What a TF Serving must support, as the serialized module itself records it.
    exported = jax.export.deserialize(bytearray((stablehlo_dir / "generate.jaxexport").read_bytes()))
    for path in (stablehlo_dir / MANIFEST, saved_model_dir / EXTRA / MANIFEST):
        assert read_manifest(path)["calling_convention_version"] == exported.calling_convention_version
    # The manifest's output dtypes are the ones the artifact really returns.
    out = load_stablehlo(stablehlo_dir).generate(tiny.ids, tiny.mask)
    described = read_manifest(stablehlo_dir / MANIFEST)["signatures"]["generate"]["outputs"]
    assert {k: str(v.dtype) for k, v in out.items()} == {k: v["dtype"] for k, v in described.items()}


def test_fixed_batch_logits_only_export_rejects_other_shapes(tf, tiny, tmp_path):
    spec = ExportSpec(prompt_len=P, max_new_tokens=N, batch=2, platforms=("cpu",), signatures=("logits",))
    expected = np.asarray(tiny.model(tiny.ids[:2], mask=tiny.mask[:2].astype(bool))[0])
    out = export_stablehlo(tiny.model, tmp_path / "hlo", spec, stop_ids=tiny.stop_ids, pad_id=PAD)
    assert not (out / "generate.jaxexport").exists()
    artifact = load_stablehlo(out)
    assert artifact.exported["logits"].in_avals[-1].shape == (2, P)
    np.testing.assert_allclose(artifact.logits(tiny.ids[:2], tiny.mask[:2])["logits"], expected, atol=1e-5)
    # The SavedModel's serving_default is then the logits signature, with the fixed batch in its shapes.
    sm = export_saved_model(tiny.model, tmp_path / "sm", spec, stop_ids=tiny.stop_ids, pad_id=PAD)
    default = tf.saved_model.load(str(sm)).signatures["serving_default"]
    assert default.structured_input_signature[1]["input_ids"].shape.as_list() == [2, P]
    got = default(input_ids=tf.constant(tiny.ids[:2]), attention_mask=tf.constant(tiny.mask[:2]))
    np.testing.assert_allclose(got["logits"].numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"input_ids has shape \[3, 16\], this export takes \[2, 16\]"):
        artifact.logits(tiny.ids, tiny.mask)
    with pytest.raises(KeyError, match="no 'generate' function"):
        artifact.generate(tiny.ids[:2], tiny.mask[:2])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt_len": 0}, "prompt_len must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"batch": 0}, "batch must be >= 1"),
        ({"platforms": ("cpu", "gpu")}, "platforms must be a non-empty subset"),
        ({"signatures": ("generate", "sample")}, "signatures must be a non-empty subset"),
    ],
)
def test_bad_specs_are_rejected_with_what_to_change(changes, message):
    spec = ExportSpec(**{"prompt_len": P, "max_new_tokens": N, **changes})
    with pytest.raises(ValueError, match=message):
        spec.validate(CFG)


def test_learned_positions_bound_prompt_plus_new_tokens():
    gpt2 = ModelConfig(
        family="gpt2", vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2,
        head_dim=8, intermediate_size=32, positional="learned", max_position_embeddings=20,
    )  # fmt: skip
    ExportSpec(prompt_len=12, max_new_tokens=8).validate(gpt2)
    with pytest.raises(ValueError, match=r"exceed the model's 20 learned positions"):
        ExportSpec(prompt_len=13, max_new_tokens=8).validate(gpt2)


# ---------------------------------------------------------------------------------------------------
# scripts/export.py, end to end on a tiny HF directory with a real (word-level) tokenizer.


def _word_tokenizer_dir(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_hf_dir(tiny, tmp_path_factory):
    directory = export_hf(tiny.model, tmp_path_factory.mktemp("tiny_hf"))
    _word_tokenizer_dir(directory)
    return directory


def _run_export(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export.py"), *args],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env,
    )  # fmt: skip


# The SavedModel run also covers bfloat16 weights (TF bfloat16 variables feeding the module).
@pytest.mark.parametrize(("fmt", "dtype"), [("stablehlo", "float32"), ("saved_model", "bfloat16")])
def test_export_cli_writes_and_verifies_each_format(fmt, dtype, tiny_hf_dir, tmp_path):
    out = tmp_path / "export"
    common = ["--model", str(tiny_hf_dir), "--format", fmt, "--out", str(out), "--prompt_len", str(P)]
    proc = _run_export(
        *common, "--max_new_tokens", str(N), "--platforms", "cpu", "--dtype", dtype, "--verify",
        "--verify_prompt", "w3 w4 w5", "--verify_prompt", "w9 w10 w11 w12 w13 w14 w15",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {fmt} export to {out}" in proc.stdout
    assert "verify: greedy tokens equal the JAX sampler's: 2 prompts x 8 tokens" in proc.stdout
    manifest_dir = out / EXTRA if fmt == "saved_model" else out
    manifest = json.loads((manifest_dir / MANIFEST).read_text())
    assert (manifest["source"], manifest["platforms"], manifest["compute_dtype"]) == (
        str(tiny_hf_dir),
        ["cpu"],
        dtype,
    )
    assert manifest["stop_ids"] == [1]
    # The tokenizer travels with the artifact, so a client can encode requests from it alone.
    assert (manifest_dir / "tokenizer" / "tokenizer.json").is_file()
    again = _run_export(*common)
    assert again.returncode == 2 and "exists and is not empty; pass --overwrite" in again.stderr


def test_export_cli_bad_input_prints_one_line(tmp_path):
    proc = _run_export("--model", "./missing.gguf", "--format", "stablehlo", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model path './missing.gguf' does not exist")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    not_a_model = _run_export(
        "--model", str(REPO / "tests"), "--format", "stablehlo", "--out", str(tmp_path / "y")
    )
    assert not_a_model.returncode == 2 and "is a directory without config.json" in not_a_model.stderr


# ---------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct GGUF: both formats, 8 greedy tokens on two short prompts.


def test_real_smollm2_exports_decode_like_jax(tf, smollm_gguf, tmp_path):
    loaded = load_model(smollm_gguf)
    tok = loaded.tokenizer
    ids, mask = tok.encode_batch(["Paris is the capital of", "1, 2, 3, 4,"], length=32)
    mask = mask.astype(np.int32)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    ref = jax.device_get(Sampler(loaded.model, tok).generate_ids(ids, mask.astype(bool), params))
    spec = ExportSpec(prompt_len=32, max_new_tokens=8, signatures=("generate",))
    kwargs = {"stop_ids": tok.stop_ids, "pad_id": tok.pad_id, "tokenizer": tok}

    hlo = export_stablehlo(loaded.model, tmp_path / "hlo", spec, **kwargs)
    exported = jax.export.deserialize(bytearray((hlo / "generate.jaxexport").read_bytes()))
    out = jax.device_get(exported.call(load_file(str(hlo / "params.safetensors")), ids, mask))
    np.testing.assert_array_equal(out["tokens"], ref.tokens)
    np.testing.assert_array_equal(out["lengths"], ref.lengths)

    sm = export_saved_model(loaded.model, tmp_path / "sm", spec, **kwargs)
    got = tf.saved_model.load(str(sm)).signatures["serving_default"](
        input_ids=tf.constant(ids), attention_mask=tf.constant(mask)
    )
    np.testing.assert_array_equal(got["tokens"].numpy(), ref.tokens)
    np.testing.assert_array_equal(got["lengths"].numpy(), ref.lengths)
    assert tok.decode(tok.truncate_at_stop(got["tokens"].numpy()[1])).startswith(" 5, 6")


def test_saved_model_cli_shows_the_documented_signature(saved_model_dir, tmp_path):
    """deploy/README.md's `saved_model_cli show --dir exports/rlvr/1 ...`, run as written on an export laid
    out the same way (TF Serving's BASE/NAME/VERSION), shows the inputs and outputs that it documents."""
    from tests.doc_commands import documented_commands

    (command,) = [c for c in documented_commands() if c.tokens[0] == "saved_model_cli"]
    (tmp_path / "exports" / "rlvr").mkdir(parents=True)
    (tmp_path / "exports" / "rlvr" / "1").symlink_to(saved_model_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-c", command.text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, dtype, shape in [
        ("input_ids", "DT_INT32", f"(-1, {P})"), ("attention_mask", "DT_INT32", f"(-1, {P})"),
        ("tokens", "DT_INT32", f"(-1, {N})"), ("logprobs", "DT_FLOAT", f"(-1, {N})"),
        ("lengths", "DT_INT32", "(-1)"), ("finished", "DT_BOOL", "(-1)"),
    ]:  # fmt: skip
        block = proc.stdout.split(f"['{name}'] tensor_info:", 1)[1].split("name:", 1)[0]
        assert f"dtype: {dtype}" in block and f"shape: {shape}" in block, (name, block)
    assert "Method name is: tensorflow/serving/predict" in proc.stdout
