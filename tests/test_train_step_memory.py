"""benchmarks/train_step.py reads memory per configuration from the compiled program."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks.train_step import compiled_memory


def test_the_compiled_memory_reading_follows_each_configuration_not_the_process_peak():
    step = jax.jit(lambda x: jnp.sin(x @ x.T) @ x)  # a [rows, rows] temporary between the two products
    big = compiled_memory(step, jnp.ones((1024, 256), jnp.float32))
    small = compiled_memory(step, jnp.ones((64, 256), jnp.float32))  # compiled after the big one
    assert big["arguments_gb"] == pytest.approx(1024 * 256 * 4 / 1e9, abs=1e-6)
    assert small["arguments_gb"] == pytest.approx(64 * 256 * 4 / 1e9, abs=1e-6)
    assert big["temporaries_gb"] >= 1024 * 1024 * 4 / 1e9 * 0.99  # the [1024, 1024] product
    assert small["peak_gb"] < big["peak_gb"] / 10
    assert big["peak_gb"] >= big["arguments_gb"] + big["outputs_gb"] - big["aliased_gb"]


def test_a_donated_argument_written_in_place_is_counted_once():
    step = jax.jit(lambda x: x * 2.0, donate_argnums=0)
    reading = compiled_memory(step, jnp.ones((512, 512), jnp.float32))
    assert reading["aliased_gb"] == reading["arguments_gb"] == pytest.approx(512 * 512 * 4 / 1e9, abs=1e-6)
    assert reading["peak_gb"] < 2 * reading["arguments_gb"]


# ------------------------------------------------------------------------------- LoRA in the sweep

TINY_SHAPE = {
    "model_type": "llama", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 128,
}  # fmt: skip


@pytest.fixture
def tiny_shape(monkeypatch):
    """A tiny shape in the sweep's table (which hands each child process its config), and the test
    suite's persistent compilation cache for those children: a cold start is mostly compiling."""
    import jax

    from benchmarks import rollout
    from tests.tiny import use_compilation_cache

    monkeypatch.setitem(rollout.SHAPES, "tiny-test", TINY_SHAPE)
    use_compilation_cache()
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return "tiny-test"


def _spec(**changes):
    spec = {"shape": "tiny-test", "hf_config": TINY_SHAPE, "seq": 32, "rows": 2, "remat": "none",
            "repeats": 1, "prompt_len": 16, "lora_rank": 0, "lora_alpha": 8.0, "profile": None}  # fmt: skip
    return spec | changes


def test_the_sweep_compares_full_fine_tuning_with_lora_each_in_its_own_process(tiny_shape, tmp_path):
    from benchmarks import train_step
    from rlvr_jax.models import ModelConfig

    out = tmp_path / "lora.json"
    argv = ["--shape", tiny_shape, "--seq", "32", "--tokens", "64", "--remat", "none", "--repeats", "1",
            "--lora_rank", "0", "4", "--lora_alpha", "8", "--out", str(out)]  # fmt: skip
    assert train_step.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["device"] and record["versions"]["jax"] and "--lora_rank 0 4" in record["command"]
    full, lora = record["results"]
    cfg = ModelConfig.from_hf_config(TINY_SHAPE)
    adapters = cfg.replace(lora_rank=4).num_adapter_params()
    assert (full["lora_rank"], lora["lora_rank"], lora["lora_alpha"]) == (0, 4, 8.0)
    for r in (full, lora):
        assert "error" not in r, r
        assert r["rows"] == 2 and r["tokens_per_step"] == 64 and r["loss_finite"] and r["process_s"] > 0
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["compiled_memory"]["peak_gb"] > 0
    # Full fine-tuning: every parameter trains, float32 masters with Adam's two float32 moments.
    assert full["trainable_params"] == cfg.num_params() and full["param_bytes"] == 4 * cfg.num_params()
    assert 8 * cfg.num_params() <= full["optimizer_state_bytes"] <= 8 * cfg.num_params() + 64
    # LoRA: the adapters alone train (float32 masters and moments); the frozen base is kept in bf16.
    assert lora["trainable_params"] == adapters and lora["trainable_param_bytes"] == 4 * adapters
    assert lora["param_bytes"] == 2 * cfg.num_params() + 4 * adapters
    assert 8 * adapters <= lora["optimizer_state_bytes"] <= 8 * adapters + 64
    assert lora["compiled_memory"]["arguments_gb"] < full["compiled_memory"]["arguments_gb"] / 2


def test_out_of_memory_while_allocating_or_stepping_is_a_result_and_a_dead_child_too(monkeypatch):
    import rlvr_jax.optim
    import rlvr_jax.rl.update
    from benchmarks import train_step

    def no_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 30.46GiB.")

    with monkeypatch.context() as m:
        m.setattr(rlvr_jax.optim, "init_train_state", no_memory)
        r = train_step.run_one(_spec(lora_rank=4))
    assert (r["error"], r["stage"]) == ("out of memory", "init") and "30.46GiB" in r["message"]
    assert r["trainable_params"] > 0 and r["optimizer_state_bytes"] > 0 and "step_s" not in r

    class Step:  # compiles, then runs out of memory at its first call
        def lower(self, *args):
            return self

        def compile(self):
            return no_memory

    monkeypatch.setattr(rlvr_jax.rl.update, "make_train_step", lambda *args, **kwargs: Step())
    r = train_step.run_one(_spec())
    assert (r["error"], r["stage"]) == ("out of memory", "step") and "init_s" in r and "step_s" not in r

    # A child that dies is recorded with its stderr's end (here a config the model cannot be built from).
    r = train_step.run_isolated(_spec(hf_config={"model_type": "no-such-family"}), timeout=120)
    assert (r["error"], r["stage"], r["lora_rank"]) == ("exit 1", "process died", 0)
    assert "unsupported architecture" in r["message"]
    assert train_step.is_out_of_memory("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: ...")
