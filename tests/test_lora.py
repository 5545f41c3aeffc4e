"""LoRA (`model.lora.*`): a fresh adapter is the base model, the adapter model equals its merged export and
PEFT's reading of its adapter export in transformers, only adapters train and hold Adam moments, and a
checkpoint of adapters alone resumes exactly; and the real trainer (`train()`) with LoRA end to end: memory
probe, warm-up, KL reference, adapter-only checkpoints, both exports, and an exact resume."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlvr_jax.checkpointing import Checkpointer
from rlvr_jax.config import ConfigError, base_config, lora_options, validate
from rlvr_jax.models import KVCache, ModelConfig, lora
from rlvr_jax.models.decoder import apply, fuse_projections, unstack_layers
from rlvr_jax.optim import init_train_state, make_optimizer
from rlvr_jax.optim.state import checkpoint_view, from_checkpoint, partition_trainable, stored_params
from rlvr_jax.rl.update import make_train_step
from tests import train_step_checks as checks
from tests.tiny import TINY, numpy_model

RANK, ALPHA = 4, 8.0


def _randomise_b(model: nnx.Module, scale: float = 0.2, seed: int = 1) -> nnx.Module:
    """The model with every adapter B drawn at random: a trained adapter, without training."""
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)

    def fill(path: tuple, var: nnx.Variable) -> nnx.Variable:
        if not str(getattr(path[-1], "key", path[-1])).endswith("_lora_b"):
            return var
        return var.replace(jnp.asarray(rng.standard_normal(var.shape) * scale, var.dtype))

    state = jax.tree_util.tree_map_with_path(fill, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def _leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.array(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# ------------------------------------------------------------------------------------------- the model


def test_zero_initialised_adapters_give_the_base_logits_exactly():
    base = numpy_model(TINY, 0.3)
    adapted = lora.with_adapters(base, RANK, ALPHA, seed=2)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, TINY.vocab_size, (2, 9)))
    mask = jnp.asarray(np.arange(9)[None] >= np.array([[0], [3]]))
    np.testing.assert_array_equal(
        np.asarray(adapted(tokens, mask=mask)[0]), np.asarray(base(tokens, mask=mask)[0])
    )
    layers = nnx.state(adapted)["layers"]
    assert sorted(k for k in layers if lora.is_adapter(k)) == sorted(
        f"{t}_lora_{ab}" for t in ("q", "k", "v", "o", "gate", "up", "down") for ab in "ab"
    )
    # A follows the base weight's input axes, B its output axes; the rank axis is never sharded.
    assert layers["q_lora_a"].get_metadata()["axes"] == ("layers", "embed", "lora_rank")
    assert layers["q_lora_b"].get_metadata()["axes"] == ("layers", "lora_rank", "q_heads", "head_dim")
    assert layers["o_lora_a"].get_metadata()["axes"] == ("layers", "q_heads", "head_dim", "lora_rank")
    assert layers["down_lora_b"].get_metadata()["axes"] == ("layers", "lora_rank", "embed")
    assert layers["o_lora_a"].shape == (TINY.num_layers, TINY.num_heads, TINY.head_dim, RANK)
    assert not np.any(np.asarray(layers["up_lora_b"][...])) and np.any(np.asarray(layers["up_lora_a"][...]))


def test_the_samplers_merged_fused_weights_give_the_adapter_models_logits():
    base = numpy_model(TINY, 0.3)
    model = _randomise_b(lora.with_adapters(base, RANK, ALPHA, targets=("q", "v", "o", "down")))
    assert model.cfg.lora_projections == ("q", "v", "o", "down")
    tokens = jnp.asarray(np.random.default_rng(1).integers(1, TINY.vocab_size, (2, 7)))
    full, _ = model(tokens)
    merged, _ = lora.merged_model(model)(tokens)
    assert float(jnp.abs(full - base(tokens)[0]).max()) > 1e-2  # the adapters do change the function
    arrays = model.arrays()
    arrays["layers"] = [
        fuse_projections(model.cfg, p) for p in unstack_layers(arrays["layers"], TINY.num_layers)
    ]
    assert not any(lora.is_adapter(k) for p in arrays["layers"] for k in p)
    fused, _ = apply(model.cfg, arrays, tokens, cache=KVCache.init(model.cfg, 2, 8))
    np.testing.assert_allclose(np.asarray(fused), np.asarray(full), atol=1e-5)
    np.testing.assert_allclose(np.asarray(merged), np.asarray(full), atol=1e-5)


def test_adapter_count_and_the_model_flops_of_a_lora_update():
    """`num_adapter_params` counts the adapters `with_adapters` makes; a LoRA update's model FLOPs charge
    the frozen base 4 per parameter per token (no weight gradient) and the adapters 6."""
    from rlvr_jax.models.decoder import abstract_model
    from rlvr_jax.monitoring.metrics import model_flops

    gpt2 = ModelConfig(family="gpt2", vocab_size=8, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2,
                       head_dim=4, intermediate_size=16, mlp_type="plain")  # fmt: skip
    for cfg in (TINY.replace(lora_rank=RANK), TINY.replace(lora_rank=3, lora_targets=("q", "o", "down")),
                gpt2.replace(lora_rank=2)):  # fmt: skip
        adapters = partition_trainable(nnx.state(abstract_model(cfg)))[0]
        assert cfg.num_adapter_params() == sum(x.size for x in jax.tree.leaves(adapters)) > 0
    cfg = TINY.replace(lora_rank=RANK)
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 10
    assert TINY.num_adapter_params() == 0
    assert model_flops(TINY, (4, 10)) == (6 * TINY.num_params() + attention) * 40
    assert model_flops(cfg, (4, 10)) == (4 * cfg.num_params() + 6 * cfg.num_adapter_params() + attention) * 40


def test_lora_options_are_validated():
    with pytest.raises(ValueError, match=r"unknown LoRA targets \['qkv'\]"):
        TINY.replace(lora_rank=2, lora_targets=("q", "qkv"))
    with pytest.raises(ValueError, match="rank must be an integer >= 0"):
        TINY.replace(lora_rank=-1)
    gpt2 = ModelConfig(family="gpt2", vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                       head_dim=4, intermediate_size=16, mlp_type="plain")  # fmt: skip
    assert gpt2.replace(lora_rank=2).lora_projections == ("q", "k", "v", "o", "up", "down")
    with pytest.raises(ValueError, match="name no projection"):
        gpt2.replace(lora_rank=2, lora_targets=("gate",))
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    assert lora_options(c) is None
    c.model.lora.targets = ("q", "attn")
    with pytest.raises(ConfigError, match=r"model\.lora: unknown LoRA targets \['attn'\]"):
        validate(c)
    c.model.lora.targets, c.model.lora.rank = ("q", "v"), -2
    with pytest.raises(ConfigError, match=r"model\.lora\.rank must be an integer >= 0 \(0: off\)"):
        validate(c)
    c.model.lora.rank = 8
    validate(c)
    assert lora_options(c) == {"rank": 8, "alpha": 16.0, "targets": ("q", "v")}


# ---------------------------------------------------------------------------------- training, resuming


@pytest.fixture(scope="module")
def lora_run():
    """A LoRA model, its step function (compiled once for the module) and a rollout batch."""
    model = lora.with_adapters(checks._model(), RANK, ALPHA, seed=3)
    opt = make_optimizer(checks.OPTIM)
    step = make_train_step(nnx.graphdef(model), opt, checks.LOSS, temperature=checks.TEMPERATURE, chunk=4,
                           micro_batches=2)  # fmt: skip
    return model, opt, step, checks.rollout_batch()


def test_only_adapters_train_and_the_optimizer_state_is_adapter_sized(lora_run):
    model, opt, step, batch = lora_run
    state = init_train_state(model, opt)
    adapters, frozen = partition_trainable(state.params)
    adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(adapters))
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(frozen))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    # Adam's mu and nu, one per adapter, nothing base-sized (+ scalar counts).
    assert len(moments) == 2 * len(jax.tree.leaves(adapters)) == 2 * 14
    assert sum(x.nbytes for x in moments) == 2 * adapter_bytes < base_bytes
    assert {x.shape for x in moments} == {x.shape for x in jax.tree.leaves(adapters)}

    before = _leaves(state.params)
    for _ in range(2):
        state, metrics = step(state, batch)
        assert float(metrics["skipped"]) == 0.0 and float(metrics["grad_norm"]) > 0
    after = _leaves(state.params)
    for name, value in after.items():
        if "_lora_" in name:
            assert not np.array_equal(value, before[name]), f"{name} did not train"
        else:
            np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed")


def test_the_frozen_base_is_stored_in_the_compute_dtype():
    model = lora.with_adapters(numpy_model(TINY, 0.3), RANK, ALPHA)
    cfg = model.cfg.replace(dtype="bfloat16")
    stored = jax.eval_shape(lambda p: stored_params(p, "float32", cfg), nnx.state(model))
    adapters, frozen = partition_trainable(stored)
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}


def test_checkpoint_holds_the_adapters_and_resumes_exactly(lora_run, tmp_path):
    model, opt, step, batch = lora_run
    state, _ = step(init_train_state(model, opt), batch)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.save(1, checkpoint_view(state))
        raw, _ = ckpt.restore(1)
    saved = jax.tree.leaves(raw["params"])
    assert len(saved) == 14 and sum(x.nbytes for x in saved) == sum(
        x.nbytes for x in jax.tree.leaves(partition_trainable(state.params)[0])
    )

    # A resumed run reloads the base (here: the same model) and puts the checkpoint's adapters on it.
    fresh = init_train_state(model, opt)
    with Checkpointer(tmp_path) as ckpt:
        restored, _ = ckpt.restore(None, checkpoint_view(fresh))
    resumed = from_checkpoint(fresh, restored)
    expected = _leaves(state)
    assert _leaves(resumed).keys() == expected.keys()
    for name, value in _leaves(resumed).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    a, _ = step(state, batch)
    b, _ = step(resumed, batch)
    for (name, x), y in zip(_leaves(a).items(), _leaves(b).values(), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


# --------------------------------------------------------------------------- exports against transformers


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A tiny transformers Qwen2 (q/k/v biases, tied head), and our LoRA model on its weights with random
    B (as after training)."""
    from rlvr_jax.weights import load_policy
    from tests.test_model_parity import _make_hf_model

    path = tmp_path_factory.mktemp("qwen2")
    hf_model = _make_hf_model("qwen2", path)
    options = {"rank": RANK, "alpha": ALPHA, "targets": ("q", "k", "v", "o", "gate", "up", "down")}
    model, _ = load_policy(path, dtype="float32", param_dtype="float32", lora_options=options, seed=4)
    return hf_model, _randomise_b(model, scale=0.3), path


def test_merged_export_loads_in_transformers_with_the_adapter_models_logits(hf_pair, tmp_path):
    import transformers

    from rlvr_jax.weights import export_hf
    from tests.test_model_parity import TOL, _batch, _hf_logits

    hf_base, model, _ = hf_pair
    ids, mask = _batch(seed=4)
    ours = np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask))[0])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "merged"),
                                                                 attn_implementation="eager")  # fmt: skip
    merged = _hf_logits(reloaded.eval(), ids, mask)
    assert np.abs(merged - _hf_logits(hf_base, ids, mask))[mask].max() > 0.1  # the adapters matter
    diff = np.abs(merged - ours)[mask].max()
    assert diff < TOL, f"merged export differs from the adapter model by {diff}"


def test_peft_loads_the_adapter_export_onto_the_transformers_base(hf_pair, tmp_path):
    import json

    import peft  # a dev dependency (setup.py): missing, this test fails rather than skips
    import transformers

    from rlvr_jax.weights import export_peft
    from tests.test_model_parity import TOL, _batch, _hf_logits

    _, model, path = hf_pair
    out = export_peft(model, tmp_path / "adapter", base_model=str(path))
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (RANK, ALPHA, "LORA")
    base = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(base, out).eval()
    ids, mask = _batch(seed=5)
    ours = np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask))[0])
    diff = np.abs(_hf_logits(peft_model, ids, mask) - ours)[mask].max()
    assert diff < TOL, f"PEFT's adapter model differs from ours by {diff}"


# ------------------------------------------------------------------------- the real trainer, end to end

from tests.test_trainer import _deterministic, _tiny_config, tiny_model_dir  # noqa: E402, F401

TRAIN_STEPS = 3


def _lora_config(model_dir):
    """The tiny trainer config with rank-4 adapters, a checkpoint every step, the memory probe choosing the
    micro-batches, the KL term on (a frozen reference), and both exports (merged HF and PEFT adapter)."""
    c = _tiny_config(model_dir, **{"train.steps": TRAIN_STEPS, "train.checkpoint_every": 1,
                                   "train.export_hf": True})  # fmt: skip
    c.model.lora.rank, c.model.lora.alpha = RANK, ALPHA
    c.data.eval_limit = 4
    c.rl.prompts_per_step, c.rl.group_size = 2, 4
    c.rl.beta = 0.05  # a reference model: with LoRA the initial adapters over the frozen base
    c.sampling.max_new_tokens = 4
    c.optim.micro_batches = 0  # the memory probe compiles the step with the LoRA train state
    return c


def _train_quietly(config, workdir) -> tuple[object, str]:
    import contextlib
    import io

    from rlvr_jax.trainer import train

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = train(config, workdir)
    return summary, out.getvalue()


@pytest.fixture(scope="module")
def trained_lora_run(tiny_model_dir, tmp_path_factory):  # noqa: F811
    """`train()` with LoRA for 3 steps; then its step-3 checkpoint is set aside (as if the run had died
    before writing it) and the same command resumes from step 2 and redoes step 3. Returns what both
    runs left, so that every test reads one pair of runs."""
    import shutil

    from rlvr_jax.monitoring.metrics import read_metrics
    from tests.tiny import use_compilation_cache

    use_compilation_cache()  # the resumed run compiles the very programs the first one did
    root = tmp_path_factory.mktemp("lora_run")
    workdir, first = root / "run", root / "first"
    config = _lora_config(tiny_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLVR_CACHE_DIR", str(root / "cache"))  # the probe's estimate cache, this run's own
        summary, out = _train_quietly(config, workdir)
        (first / "checkpoints").mkdir(parents=True)
        for name in ("metrics.jsonl", "memory_probe.json", "hf_export", "peft_adapter"):
            copy = shutil.copytree if (workdir / name).is_dir() else shutil.copy
            copy(workdir / name, first / name)
        shutil.move(workdir / "checkpoints" / str(TRAIN_STEPS), first / "checkpoints" / str(TRAIN_STEPS))
        resumed, resumed_out = _train_quietly(config, workdir)
    return {
        "config": config, "workdir": workdir, "first": first, "summary": summary, "out": out,
        "resumed": resumed, "resumed_out": resumed_out, "model_dir": tiny_model_dir,
        "rows": [r for r in read_metrics(first / "metrics.jsonl") if "train/loss" in r],
        "resumed_rows": [r for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r],
    }  # fmt: skip


def _safetensors(folder) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(path))
    return out


def test_the_trainer_runs_lora_with_the_probe_the_warm_up_and_finite_metrics(trained_lora_run, capsys):
    from rlvr_jax.trainer import print_summary

    run = trained_lora_run
    rows, out = run["rows"], run["out"]
    assert [r["step"] for r in rows] == list(range(1, TRAIN_STEPS + 1))
    for r in rows:
        train = {k: v for k, v in r.items() if k.startswith(("train/", "reward/"))}
        assert np.isfinite(list(train.values())).all(), train
        assert r["train/skipped"] == 0 and r["train/grad_norm"] > 0
    assert any(abs(r["train/kl"]) > 0 for r in rows[1:])  # the adapters moved away from the reference
    # The probe compiled the step on the LoRA state: its arguments are the frozen base (float32 here)
    # plus adapter-sized moments, far below a full fine-tune's params + two Adam moments.
    probe = json.loads((run["first"] / "memory_probe.json").read_text())
    assert probe["micro_batches"] >= 1 and not probe["from_cache"] and "memory probe: micro-batches" in out
    assert "warm-up: compiling 1 prompt bucket(s)" in out and "compiled the update" in out
    assert "compiled the reference log-probs" in out
    summary = run["summary"]
    assert summary.steps == TRAIN_STEPS and summary.eval_after
    assert (summary.export_dir, summary.peft_dir) == (str(run["workdir"] / "hf_export"),
                                                      str(run["workdir"] / "peft_adapter"))  # fmt: skip
    print_summary(summary)
    assert f"PEFT adapter:  {summary.peft_dir}" in capsys.readouterr().out


def test_lora_checkpoints_hold_the_adapters_alone(trained_lora_run):
    ckpt_dir = trained_lora_run["first"] / "checkpoints"
    with Checkpointer(ckpt_dir) as ckpt:
        raw, meta = ckpt.restore(TRAIN_STEPS)
    assert meta["step"] == TRAIN_STEPS
    names = set(raw["params"]["layers"])
    assert set(raw["params"]) == {"layers"}  # no embedding, no norms: the base is not in a checkpoint
    assert names == {f"{t}_lora_{ab}" for t in ("q", "k", "v", "o", "gate", "up", "down") for ab in "ab"}
    moments = [x for x in jax.tree.leaves(raw["opt_state"]) if np.ndim(x)]
    assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(raw["params"]))


def test_only_the_adapters_trained_the_exports_agree_and_the_base_is_the_initial_one(trained_lora_run):
    """The final model (checkpoint adapters over model.path, as scripts/evaluate.py loads it) has the
    initial base weights and trained adapters; the merged HF export is exactly base + alpha / r * B @ A of
    the PEFT export's tensors, and every other tensor of it is the initial one."""
    from rlvr_jax.evaluation.evaluate import load_for_eval

    run = trained_lora_run
    config, first = run["config"], run["first"]
    initial, _, _ = load_for_eval(config)  # model.path with the run's fresh adapters
    final, _, where = load_for_eval(config, checkpoint=run["workdir"])
    assert where["checkpoint_step"] == TRAIN_STEPS
    before, after = _leaves(nnx.state(initial)), _leaves(nnx.state(final))
    assert before.keys() == after.keys()
    for name, value in after.items():
        if "_lora_b" in name:
            assert np.abs(value).max() > 0 and not np.array_equal(value, before[name]), name
        elif "_lora_a" in name:
            assert not np.array_equal(value, before[name]), name
        else:
            np.testing.assert_array_equal(value, before[name], err_msg=f"base weight {name} changed")

    base = _safetensors(run["model_dir"])
    merged = _safetensors(first / "hf_export")
    adapter = _safetensors(first / "peft_adapter")
    peft_config = json.loads((first / "peft_adapter" / "adapter_config.json").read_text())
    assert (peft_config["r"], peft_config["lora_alpha"]) == (RANK, ALPHA)
    assert peft_config["base_model_name_or_path"] == str(config.model.path)
    assert merged.keys() == base.keys()
    targets = {k.removesuffix(".lora_A.weight").removeprefix("base_model.model.") for k in adapter
               if k.endswith(".lora_A.weight")}  # fmt: skip
    assert len(targets) == 7 * 2  # seven projections in each of the two layers
    for name, w in base.items():
        module = name.removesuffix(".weight")
        if module in targets:
            a = adapter[f"base_model.model.{module}.lora_A.weight"]  # [r, in]
            b = adapter[f"base_model.model.{module}.lora_B.weight"]  # [out, r]
            assert np.abs(b).max() > 0
            np.testing.assert_allclose(merged[name], w + ALPHA / RANK * (b @ a), atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(merged[name], w, err_msg=name)


def test_a_lora_run_resumes_from_its_checkpoint_exactly(trained_lora_run):
    run = trained_lora_run
    assert "resumed from" in run["resumed_out"] and "at step 2" in run["resumed_out"].split("resumed from")[1]
    assert run["resumed"].steps == TRAIN_STEPS
    again = [_deterministic(r) for r in run["resumed_rows"]]
    assert [r["step"] for r in again] == list(range(1, TRAIN_STEPS + 1))  # step 3 logged once, anew
    for a, b in zip([_deterministic(r) for r in run["rows"]], again, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k, a[k], b[k])
    # The redone step 3 wrote the same adapters as the first run's step 3, so the same exports.
    with Checkpointer(run["first"] / "checkpoints") as ckpt:
        first = _leaves(ckpt.restore(TRAIN_STEPS)[0])
    with Checkpointer(run["workdir"] / "checkpoints") as ckpt:
        second = _leaves(ckpt.restore(TRAIN_STEPS)[0])
    assert first.keys() == second.keys()
    for name, value in second.items():
        np.testing.assert_array_equal(value, first[name], err_msg=name)
    for folder in ("peft_adapter", "hf_export"):
        a, b = _safetensors(run["first"] / folder), _safetensors(run["workdir"] / folder)
        for name, value in b.items():
            np.testing.assert_array_equal(value, a[name], err_msg=f"{folder}: {name}")
