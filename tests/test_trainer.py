"""The training loop end to end: learning on a trivial verifiable task, exact resume after SIGKILL, and
the quickstart config's outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax.data.base import Task, register_task, registered_tasks
from rlvr_jax.models import ModelConfig, init_model
from rlvr_jax.monitoring.metrics import read_metrics
from rlvr_jax.weights import export_hf
from tests.conftest import REPO
from tests.digits_task import _digits_task, vowel_fraction  # noqa: F401 (registers the digits_test task)

TRAIN = [sys.executable, str(REPO / "scripts" / "train.py")]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm_gguf):
    """A tiny random llama with the real SmolLM2 tokenizer, saved as an HF directory."""
    from rlvr_jax.weights.loader import load_tokenizer

    tokenizer = load_tokenizer(smollm_gguf)
    cfg = ModelConfig(
        family="llama", vocab_size=49152, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
        head_dim=16, intermediate_size=64, tie_word_embeddings=True, eos_token_ids=tokenizer.stop_ids[:1],
    )  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_model")
    export_hf(init_model(cfg, seed=0), out, tokenizer)
    return out


def _tiny_config(model_dir: Path, **overrides):
    sys.path.insert(0, str(REPO))
    from configs.quickstart import get_config

    c = get_config("tiny")
    c.model.path = str(model_dir)
    c.data.task = "digits_test"
    c.data.options = {}
    c.data.eval_split = "test"
    c.data.eval_limit = 16
    c.sampling.max_new_tokens = 8
    c.sampling.top_k = 20  # a random 49k-token model spreads mass thinly; learn to rank within the top 20
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.optim.learning_rate = 3e-2
    c.train.steps = 24
    c.train.checkpoint_every = 100
    c.logging.tensorboard = False
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def test_a_tiny_model_learns_a_trivial_verifiable_task(tiny_model_dir, tmp_path, monkeypatch):
    from rlvr_jax.trainer import train
    from tests.test_metrics_logging import FakeWandb

    wandb = FakeWandb()  # wandb is not installed here and W&B cannot be reached: its module is faked
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    logging = {"logging.tensorboard": True, "logging.wandb_project": "rlvr-tests", "logging.log_samples": 3,
               "logging.wandb_name": "digits", "logging.wandb_tags": ("tiny",)}  # fmt: skip
    summary = train(_tiny_config(tiny_model_dir, **logging), tmp_path / "run")
    rows = [r for r in read_metrics(summary.metrics_file) if "reward/mean" in r]
    assert len(rows) == 24
    first = np.mean([r["reward/mean"] for r in rows[:4]])
    last = np.mean([r["reward/mean"] for r in rows[-4:]])
    assert last > first + 0.2, f"reward did not rise: first steps {first:.3f}, last steps {last:.3f}"
    assert summary.eval_after["reward"] > summary.eval_before["reward"] + 0.2
    assert all(r["train/skipped"] == 0 for r in rows)
    assert all(r["train/learning_rate"] > 0 for r in rows)  # the rate each update used, from the schedule
    # Model FLOPs and XLA's count of the compiled update, over the measured train time.
    for r in rows:
        assert r["throughput/train_tflops_per_device"] > 0 and r["throughput/xla_cost_tflops_per_device"] > 0
    assert "throughput/mfu" not in rows[0]  # no known peak for a CPU: not made up

    # The held-out evaluations are saved as runs; the before / after report tests the difference.
    run = tmp_path / "run"
    lines = (run / "eval" / "after" / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 16 and {"id", "completion", "reward", "reason", "num_tokens"} <= samples[0].keys()
    held_out = json.loads((run / "eval" / "after" / "metrics.json").read_text())["held_out"]
    assert held_out["loaded"] == 64 and held_out["seen_in_training"] == 0 and held_out["evaluated"] == 16
    assert np.mean([r["reward"] for r in samples]) == pytest.approx(summary.eval_after["reward"], rel=1e-6)
    assert summary.eval_report and (run / "eval" / "compare" / "accuracy.png").exists()
    assert "reward" in Path(summary.eval_report).read_text() and summary.eval_verdict
    _check_samples_and_figures_reach_the_dashboards(run, wandb)

    # scripts/evaluate.py's function on the final checkpoint gives the number training logged.
    from rlvr_jax.evaluation.evaluate import evaluate

    result = evaluate(_tiny_config(tiny_model_dir), tmp_path / "again", checkpoint=run, limit=16, quiet=True)
    assert result.metrics["checkpoint_step"] == 24
    assert result.metrics["mean_reward"]["value"] == pytest.approx(summary.eval_after["reward"], rel=1e-6)
    assert [r["completion"] for r in result.rows] == [r["completion"] for r in samples]


def _check_samples_and_figures_reach_the_dashboards(run: Path, wandb) -> None:
    """Before and after training, 3 held-out samples as a table, and the before / after figures of
    eval/compare as images, in TensorBoard (read back from its event file) and in W&B."""
    from tests.test_metrics_logging import Event, read_events

    figures = sorted(f"eval/compare/{p.stem}" for p in (run / "eval" / "compare").glob("*.png"))
    assert "eval/compare/accuracy" in figures
    events: list[Event] = []
    for folder in {path.parent for path in (run / "tensorboard").rglob("events.out.tfevents.*")}:
        events += read_events(folder)
    texts = {(v.tag, e.step): v.tensor.string_val[0].decode() for e in events for v in e.summary.value
             if v.tag == "eval/samples/text_summary"}  # fmt: skip
    assert sorted(texts) == [("eval/samples/text_summary", 0), ("eval/samples/text_summary", 24)]
    after = [json.loads(line) for line in (run / "eval" / "after" / "samples.jsonl").read_text().splitlines()]
    table = texts[("eval/samples/text_summary", 24)].splitlines()
    assert len(table) == 2 + 3 and table[2].startswith(f"| {after[0]['prompt']} |")
    images = sorted((v.tag, e.step) for e in events for v in e.summary.value if v.HasField("image"))
    assert images == [(tag, 24) for tag in figures]

    assert wandb.inits[0]["name"] == "digits" and wandb.inits[0]["tags"] == ["tiny"]
    tables = [(step, row["eval/samples"]) for step, row in wandb.logged if "eval/samples" in row]
    assert [step for step, _ in tables] == [0, 24] and len(tables[1][1].data) == 3
    assert tables[1][1].data[0][:3] == [after[0]["prompt"], after[0]["completion"], after[0]["reward"]]
    logged = sorted((k, step) for step, row in wandb.logged for k in row if k.startswith("eval/compare/"))
    assert logged == [(tag, 24) for tag in figures]


def test_flops_metrics_give_mfu_only_for_devices_with_a_known_peak(monkeypatch):
    from rlvr_jax.models import ModelConfig
    from rlvr_jax.monitoring import metrics as trainer

    cfg = ModelConfig(family="llama", vocab_size=100, hidden_size=16, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=8, intermediate_size=32)  # fmt: skip
    per_token = 6 * cfg.num_params() + 12 * 2 * 2 * 8 * 10
    assert trainer.model_flops(cfg, (4, 10)) == per_token * 40
    monkeypatch.setattr(trainer, "peak_flops", lambda: 1e15)
    m = trainer.flops_metrics(2e15, 1e13, updates=2, seconds=2.0, devices=2)  # 2e15 per device in 2 s
    assert m["throughput/train_tflops_per_device"] == pytest.approx(1000.0)
    assert m["throughput/mfu"] == pytest.approx(1.0)
    assert m["throughput/xla_cost_tflops_per_device"] == pytest.approx(10.0)
    monkeypatch.setattr(trainer, "peak_flops", lambda: None)
    assert trainer.flops_metrics(2e12, None, 1, 1.0, 1) == {"throughput/train_tflops_per_device": 2.0}


def _deterministic(row: dict) -> dict:
    """A metrics row without the fields that measure wall time."""
    return {
        k: v
        for k, v in row.items()
        if k not in ("time", "run_id") and not k.startswith(("time/", "throughput/", "cost/"))
    }


def test_sigkill_and_resume_rewrites_identical_metrics(tiny_model_dir, tmp_path):
    """A run killed with SIGKILL while writing its step-3 checkpoint (orbax has committed it, its integrity
    manifest is not written yet) resumes from step 2, the last complete one, and equals an uninterrupted
    run."""
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.test_trainer import _tiny_config\n"
        "from tests.tiny import use_compilation_cache\n"
        "use_compilation_cache()  # small compiles too: the later launches find every program\n"
        "from pathlib import Path\n"
        "from rlvr_jax import checkpointing\n"
        "write_manifest = checkpointing.write_manifest\n"
        "def die_writing(step_dir):\n"
        "    if Path(step_dir).name == os.environ.get('DIE_WRITING_CHECKPOINT'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return write_manifest(step_dir)\n"
        "checkpointing.write_manifest = die_writing\n"
        "def get_config(arg=None):\n"
        f"    return _tiny_config(Path({str(tiny_model_dir)!r}),\n"
        "        **{'train.steps': 6, 'train.checkpoint_every': 1, 'train.export_hf': False})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The uninterrupted run in this process (what is compared is its metrics; the killed run and the
    # resume go through the command line).
    from rlvr_jax.trainer import train

    whole = tmp_path / "whole"
    train(_tiny_config(tiny_model_dir, **{"train.steps": 6, "train.checkpoint_every": 1,
                                          "train.export_hf": False}), whole)  # fmt: skip

    killed = tmp_path / "killed"
    proc = subprocess.run([*TRAIN, f"--config={config_file}", f"--workdir={killed}"],
                          env={**env, "DIE_WRITING_CHECKPOINT": "3"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (killed / "checkpoints" / "3").is_dir()  # committed by orbax, without its manifest
    steps_before = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert 3 <= max(steps_before) < 6, "the run finished before it could be killed"

    resumed = subprocess.run([*TRAIN, f"--config={config_file}", f"--workdir={killed}"], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stdout.split("resumed from")[1].splitlines()[0]
    assert "checkpoint 3" in resumed.stderr and "integrity.json" in resumed.stderr  # the warning says why
    assert (killed / "checkpoints" / "damaged" / "3").is_dir()  # set aside, then step 3 written anew

    a = [_deterministic(r) for r in read_metrics(whole / "metrics.jsonl")]
    b = [_deterministic(r) for r in read_metrics(killed / "metrics.jsonl")]
    assert [r["step"] for r in b] == [r["step"] for r in a]  # each step exactly once
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["step"], k, ra[k], rb[k])


def test_bad_config_stops_before_loading_anything(tmp_path):
    proc = subprocess.run([*TRAIN, "--config=configs/quickstart.py", f"--workdir={tmp_path}",
                           "--config.rl.group_size=1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "rl.group_size must be >= 2" in proc.stderr
    proc = subprocess.run([*TRAIN, "--config=configs/quickstart.py", f"--workdir={tmp_path}",
                           "--config.rl.no_such_key=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "no_such_key" in proc.stderr


def test_dynamic_sampling_refills_and_logs_dropped_groups(tiny_model_dir, tmp_path):
    """With DAPO dynamic sampling on, zero-variance groups are dropped and refilled within the round cap."""
    from rlvr_jax.trainer import train

    config = _tiny_config(tiny_model_dir, **{"train.steps": 3, "train.export_hf": False})
    config.rl.dynamic_sampling = True
    config.rl.dynamic_sampling_rounds = 2
    config.rl.group_size = 2  # small groups: some have equal rewards, so dropping happens
    config.sampling.max_new_tokens = 2
    summary = train(config, tmp_path / "run")
    rows = [r for r in read_metrics(summary.metrics_file) if "reward/mean" in r]
    assert len(rows) == 3
    for r in rows:
        assert 1 <= r["groups/generation_rounds"] <= 2
        assert 0.0 <= r["groups/dropped_fraction"] <= 1.0
        assert r["train/skipped"] == 0
    assert any(r["groups/dropped_fraction"] > 0 for r in rows)


def test_json_logs_pushgateway_cost_and_a_length_shaped_reward(tiny_model_dir, tmp_path, capsys, pushgateway):
    """JSON log lines carry the run id; the last step reaches the Pushgateway; dollars are tracked. The
    reward is a weighted sum with DAPO's overlong penalty, which needs each completion's token count."""
    from rlvr_jax.trainer import train

    address, received = pushgateway
    config = _tiny_config(tiny_model_dir, **{"train.steps": 2, "train.export_hf": False})
    # vowel fraction (<= 1) - 10 x length / 8: below 0 for every completion of one token or more, so the
    # mean reward is negative exactly when the penalty saw the lengths.
    config.reward.name = "weighted_sum"
    config.reward.options = {
        "components": {"digits_test": 1.0, "overlong": 10.0},
        "component_options": {"overlong": {"max_len": 8, "buffer": 8}},
    }
    config.logging.json_logs = True
    config.logging.pushgateway = address
    config.logging.price_per_hour = 36.0  # $0.01 per second
    summary = train(config, tmp_path / "run")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    events = [r["event"] for r in lines]
    assert events[:2] == ["message", "message"] and "step" in events and events[-1] == "end"
    run_ids = {r["run_id"] for r in lines}
    assert len(run_ids) == 1 and None not in run_ids
    step_lines = [r for r in lines if r["event"] == "step" and r["step"] == 2]
    assert step_lines and step_lines[0]["cost/usd_total"] > 0
    assert lines[-1]["cost"]["usd_total"] == pytest.approx(summary.cost["usd_total"])
    assert summary.cost["price_source"] == "logging.price_per_hour"
    # usd_total = seconds x $0.01 on one device
    assert summary.cost["usd_total"] == pytest.approx(summary.cost["device_hours"] * 36.0)
    _, path, body = received[-1]
    assert path == f"/metrics/job/rlvr-train/run_id/{run_ids.pop()}"
    assert "rlvr_train_step{" in body and "} 2.0" in body.split("rlvr_train_step{")[1].split("\n")[0]
    rewards = [r["reward/mean"] for r in read_metrics(summary.metrics_file) if "reward/mean" in r]
    assert len(rewards) == 2 and all(r < 0 for r in rewards), rewards


def test_memory_probe_picks_micro_batches_and_bf16_master_weights_halve_the_state(
    tiny_model_dir, tmp_path, monkeypatch
):
    """optim.micro_batches=0: the probe's choice follows the memory budget and the update runs with it;
    model.param_dtype=bfloat16 keeps master weights and Adam moments in bf16 (half the update's inputs)."""
    from rlvr_jax.trainer import train
    from tests.tiny import lowerings

    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))

    def run(name: str, budget_gb: float, dtype: str = "float32") -> tuple[dict, list[dict]]:
        config = _tiny_config(tiny_model_dir, **{"train.steps": 1, "train.export_hf": False})
        config.model.param_dtype = dtype
        config.optim.micro_batches = 0
        config.optim.memory_budget_gb = budget_gb
        with lowerings() as lowered:
            train(config, tmp_path / name)
        probe = json.loads((tmp_path / name / "memory_probe.json").read_text())
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        assert np.isfinite([r["train/loss"] for r in rows if "train/loss" in r]).all()
        # The run's update is the executable the probe compiled for the chosen count, not a second one.
        assert lowered.count("jit(train_step)") == probe["compiles"], (lowered, probe["compiles"])
        return probe, rows

    roomy, rows = run("roomy", 100.0)
    assert roomy["micro_batches"] == 1 and not roomy["from_cache"]
    assert [r["optim/micro_batches"] for r in rows if "optim/micro_batches" in r] == [1]
    whole = roomy["estimates"]["1"]["total_bytes"]
    # A budget just under one whole-batch step: the probe must split it, and the run must use the split.
    tight, rows = run("tight", (whole - 1) / 1e9)
    assert tight["micro_batches"] > 1
    chosen = tight["estimates"][str(tight["micro_batches"])]["total_bytes"]
    assert chosen <= tight["budget_bytes"] < whole
    assert [r["optim/micro_batches"] for r in rows if "optim/micro_batches" in r] == [tight["micro_batches"]]

    half, _ = run("bf16", 100.0, dtype="bfloat16")
    ratio = half["estimates"]["1"]["argument_bytes"] / roomy["estimates"]["1"]["argument_bytes"]
    assert 0.45 < ratio < 0.6


def _two_bucket_task(split, path=None, *, chat=True, **_):
    """The digits task with 8 of its 64 prompts long enough to need a larger prompt bucket: a step's
    batch is padded to the small bucket or the large one depending on the prompts it draws."""
    first = 1000 if split == "test" else 0
    long = " Write them carefully, one after another, in a single line, with no other words at all." * 3
    return [
        {"id": f"{split}/{i}", "prompt": f"Write some digits ({first + i}).{long if i % 8 == 0 else ''}"}
        for i in range(64)
    ]


if "two_buckets_test" not in registered_tasks():
    register_task(Task("two_buckets_test", _two_bucket_task, reward="digits_test"))


def _spy_on_steps(monkeypatch) -> list[dict]:
    """Records, for every step's update: the rollout, the state's parameters before the update (a
    copy: the update donates them), the sampler, and the names of the functions JAX lowered while the
    step generated, scored and updated (`tests.tiny.lowerings`)."""
    import jax
    import jax.numpy as jnp

    from rlvr_jax.trainer import loop
    from rlvr_jax.trainer.rollouts import RolloutSource
    from tests.tiny import lowerings

    steps: list[dict] = []
    lowered: list[str] = []

    def lowering(fn):
        def wrapped(*args, **kwargs):
            with lowerings(this_thread=True) as names:
                result = fn(*args, **kwargs)
            lowered.extend(names)
            return result

        return wrapped

    update_policy = lowering(loop.update_policy)

    def spy(run, rollouts, step):
        steps.append({
            "step": step, "rows": dict(rollouts.rows), "weights": rollouts.weights, "sampler": run.sampler,
            "params_step": rollouts.params_step, "before": jax.tree.map(jnp.copy, run.state.params),
            "lowered": lowered.copy(),
        })  # fmt: skip
        lowered.clear()
        update = update_policy(run, rollouts, step)
        steps[-1]["update_tokens"] = update.batch["tokens"].shape  # after rl.update_prompt_buckets
        return update

    monkeypatch.setattr(loop, "update_policy", spy)
    for name in ("collect", "start", "take"):
        monkeypatch.setattr(RolloutSource, name, lowering(getattr(RolloutSource, name)))
    return steps


def test_a_bucket_is_reachable_when_a_batch_of_prompts_fits_in_it():
    from rlvr_jax.trainer.warmup import reachable_buckets

    buckets = (32, 64, 128)
    assert reachable_buckets([10] * 7 + [40], buckets, 8) == [64]  # 7 short prompts never fill a batch
    assert reachable_buckets([10] * 8 + [40, 100], buckets, 8) == [32, 64, 128]
    assert reachable_buckets([10] * 8 + [200], buckets, 8) == [32, 256]  # beyond the largest: its multiples
    assert reachable_buckets([10, 20], buckets, 8) == [32]  # fewer prompts than a batch: the largest still


def test_configured_prompt_buckets_reach_the_sampler_and_a_wrong_list_is_named(tiny_model_dir):
    """sampling.prompt_buckets replaces the powers of two: the trainer's sampler pads each batch of prompts
    to the configured width its longest prompt needs, and the warm-up compiles exactly those widths."""
    from rlvr_jax.config import ConfigError, validate
    from rlvr_jax.data.base import get_task, load_samples
    from rlvr_jax.evaluation.generate_and_score import encode_prompts, prompt_lengths
    from rlvr_jax.trainer.setup import Console, _load_policy
    from rlvr_jax.trainer.warmup import reachable_buckets

    for key in ("sampling.prompt_buckets", "rl.update_prompt_buckets"):
        section, name = key.split(".")
        for wrong in ((128, 96), (0, 64), (64, 64), (64.0, 96)):
            config = _tiny_config(tiny_model_dir)
            config[section][name] = wrong
            with pytest.raises(ConfigError, match=rf"{re.escape(key)} must be strictly increasing"):
                validate(config)

    config = _tiny_config(tiny_model_dir)
    config.data.task = "two_buckets_test"
    config.sampling.prompt_buckets = (24, 40, 100)
    validate(config)
    *_, sampler = _load_policy(config, Console(json_logs=False))
    assert sampler.prompt_buckets == (24, 40, 100)
    task = get_task("two_buckets_test")
    samples = load_samples(task, config, "train")
    lengths = prompt_lengths(sampler, task, samples, chat=True)
    assert min(lengths) > 24 and 64 < max(lengths) <= 100  # short ones pad to 40 (not 64), long ones 100
    widths = reachable_buckets(lengths, sampler.prompt_buckets, config.rl.prompts_per_step)
    assert widths == [40, 100]
    short = [s for s, n in zip(samples, lengths, strict=True) if n <= 40]
    assert encode_prompts(sampler, task, short[:4], chat=True)[0].shape == (4, 40)
    assert encode_prompts(sampler, task, samples[:4], chat=True)[0].shape == (4, 100)


STEP_FUNCTIONS = (
    "jit(rollout_prefill)",
    "jit(rollout_decode)",
    "jit(train_step)",
    "jit(completion_logprobs)",
)


def test_async_rollouts_lag_one_step_learn_and_warm_up_compiles_every_bucket(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """rl.async_rollouts: step k's rows were sampled by the parameters step k - 1 started from (the
    rollout ran during step k - 1's update), and the update's old log-probs come from those parameters:
    regenerating the rows with them and the step's key gives the same tokens, with the parameters the
    update starts from it does not. The reward still rises.

    train.warmup_compile (on by default) with one sampler width (128) and two update widths
    (rl.update_prompt_buckets 64, 128): the sampler's bucket and both update buckets the data can reach
    are compiled before step 1, a line each, and no step lowers the sampler, the log-prob pass or the
    update, although the steps' updates use both widths (their rows, all 128 wide, trimmed to 64 where
    the prompts are short)."""
    import jax

    from rlvr_jax.generate import SamplingParams
    from rlvr_jax.trainer import train

    steps = _spy_on_steps(monkeypatch)
    n = 16
    config = _tiny_config(tiny_model_dir, **{"train.steps": n, "train.export_hf": False})
    config.rl.async_rollouts = True
    config.train.warmup_background = False  # all before step 1 (the background's own test is below)
    config.data.task, config.data.eval_limit = "two_buckets_test", 4
    config.sampling.prompt_buckets, config.rl.update_prompt_buckets = (128,), (64, 128)
    summary = train(config, tmp_path / "run")
    out = capsys.readouterr().out

    rows = [r for r in read_metrics(summary.metrics_file) if "reward/mean" in r]
    assert [r["rollout/policy_lag"] for r in rows] == [0] + [1] * (n - 1)
    assert [s["params_step"] for s in steps] == [0, *range(n - 1)]
    assert all(r["train/skipped"] == 0 for r in rows)
    G, c = config.rl.group_size, config.sampling
    sampling = SamplingParams(c.temperature, c.top_p, c.top_k, c.max_new_tokens)
    for s in steps[:3]:
        k = s["step"]
        sampled_by = steps[max(k - 2, 0)]["before"]  # the parameters step k - 1 started from
        for a, b in zip(jax.tree.leaves(s["weights"]), jax.tree.leaves(sampled_by), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        key = jax.random.fold_in(jax.random.key(config.seed), k)
        prompts, mask = s["rows"]["prompt_ids"][::G], s["rows"]["prompt_mask"][::G]
        again, newer = (
            np.asarray(s["sampler"].generate_ids(prompts, mask, sampling, seed=key, group_size=G,
                                                 weights=weights).tokens)
            for weights in (s["weights"], s["before"])
        )  # fmt: skip
        np.testing.assert_array_equal(again, s["rows"]["tokens"])
        if k >= 2:  # the parameters the update starts from would have sampled other tokens
            assert (newer != s["rows"]["tokens"]).any()
    first = np.mean([r["reward/mean"] for r in rows[:4]])
    last = np.mean([r["reward/mean"] for r in rows[-4:]])
    assert last > first + 0.08, f"reward did not rise: {[round(r['reward/mean'], 3) for r in rows]}"

    assert (
        "warm-up: compiling the sampler for 1 prompt bucket(s) (128 tokens) and the update for 2 (64, 128)"
        in out
    )
    assert out.count("compiled the sampler") == 1 and out.count("compiled the update") == 2
    assert {s["rows"]["prompt_ids"].shape[1] for s in steps} == {128}
    assert {s["update_tokens"][1] - c.max_new_tokens for s in steps} == {64, 128}  # the updates reach both
    for s in steps:
        assert not set(s["lowered"]) & set(STEP_FUNCTIONS), (s["step"], s["lowered"])
    assert rows[0]["time/compile_s"] > 0 and all("time/compile_s" not in r for r in rows[1:])


def test_a_warm_up_in_threads_compiles_the_same_buckets_and_no_step_compiles(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """train.warmup_threads > 1: every compile runs in a pool of threads. The same buckets are announced
    and compiled (one sampler, two update widths), each compile's line is printed (the sampler's first,
    as submitted), and no step lowers the sampler, the log-prob pass or the update afterwards."""
    from rlvr_jax.trainer import train

    steps = _spy_on_steps(monkeypatch)
    config = _tiny_config(tiny_model_dir, **{"train.steps": 3, "train.export_hf": False})
    config.train.warmup_threads = 3
    config.train.warmup_background = False
    config.data.task, config.data.eval_limit = "two_buckets_test", 4
    config.sampling.prompt_buckets, config.rl.update_prompt_buckets = (128,), (64, 128)
    summary = train(config, tmp_path / "run")
    out = capsys.readouterr().out

    assert "and the update for 2 (64, 128) before step 1, up to 3 at a time" in out
    assert out.count("compiled the sampler") == 1 and out.count("compiled the update") == 2
    assert out.index("compiled the sampler") < out.index("compiled the update") < out.index("warm-up done")
    for s in steps:
        assert not set(s["lowered"]) & set(STEP_FUNCTIONS), (s["step"], s["lowered"])
    rows = [r for r in read_metrics(summary.metrics_file) if "reward/mean" in r]
    assert len(rows) == 3 and rows[0]["time/compile_s"] > 0


def test_a_background_warm_up_compiles_step_one_first_and_trains_as_one_compiled_up_front(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """train.warmup_background (the default): before step 1 only its own prompt bucket is compiled (the
    sampler, the reference log-prob pass and the update); the other reachable one compiles in a
    background thread while the run evaluates and steps, its lines marked so. No step compiles anything
    in its own thread (a step that reaches the other bucket finds it compiled, or waits for it:
    time/compile_wait_s), both buckets are used, and the run trains exactly as one that compiled
    everything before step 1: the executables compiled from shapes alone compute what the jitted
    functions do."""
    from rlvr_jax.trainer import train

    def run(name: str, background: bool) -> tuple[list[dict], str]:
        config = _tiny_config(tiny_model_dir, **{"train.steps": 6, "train.export_hf": False})
        config.train.warmup_background = background
        config.rl.beta = 0.04  # the reference log-prob pass compiles (from shapes) with each update width
        config.data.task, config.data.eval_limit = "two_buckets_test", 4
        config.sampling.prompt_buckets = (40, 100)  # short prompts pad to 40, a step with a long one to 100
        summary = train(config, tmp_path / name)
        rows = [r for r in read_metrics(summary.metrics_file) if "reward/mean" in r]
        return rows, capsys.readouterr().out

    steps = _spy_on_steps(monkeypatch)
    rows, out = run("background", True)
    first = steps[0]["rows"]["prompt_ids"].shape[1]
    other = ({40, 100} - {first}).pop()
    assert {s["rows"]["prompt_ids"].shape[1] for s in steps} == {40, 100}  # the steps reach both buckets
    before_step_1 = out[: out.index("warm-up done")]
    assert f"warm-up: compiling step 1's prompt bucket ({first} tokens) before it" in out
    assert "the other 2 compile(s) of 2 prompt bucket(s) of 40, 100 tokens go on in the background" in out
    assert before_step_1.count("compiled the sampler") == before_step_1.count("compiled the update") == 1
    assert f"x {first} + 8 tokens" in before_step_1 and f"x {other} + 8 tokens" not in before_step_1
    for what in ("sampler", "reference log-probs", "update"):
        line = rf"compiled the {what} \(64 rows x {other} \+ 8 tokens\): [0-9.]+s \(in the background\)"
        assert re.search(line, out), what
    assert "background compiles done: 2 in" in out
    for s in steps:
        assert not set(s["lowered"]) & set(STEP_FUNCTIONS), (s["step"], s["lowered"])
    assert all(r["time/compile_wait_s"] >= 0 for r in rows) and rows[0]["time/compile_s"] > 0

    upfront, out = run("up_front", False)
    assert "warm-up: compiling 2 prompt bucket(s) of 40, 100 tokens before step 1" in out
    for key in ("reward/mean", "train/loss", "train/kl", "train/grad_norm", "response/length_mean"):
        assert [r[key] for r in rows] == [r[key] for r in upfront], key


def test_background_compiles_report_failures_waits_and_jobs_never_started():
    """`BackgroundCompiles`: a step waits only for its own (kind, width), and not at all once it is done;
    a failed compile is said (the step then compiles for itself) and does not raise in the step; closing
    drops the jobs not started and the last line counts them."""
    import threading

    from rlvr_jax.trainer.warmup import BackgroundCompiles

    release = threading.Event()

    def slow() -> list[str]:
        release.wait(10)
        return ["  compiled the sampler (x): 1.0s"]

    def broken() -> list[str]:
        raise RuntimeError("out of host memory")

    compiles = BackgroundCompiles(threads=1)
    compiles.submit("sampler", 64, slow)
    compiles.submit("update", 64, broken)
    compiles.submit("update", 128, lambda: ["  never"])
    assert compiles.wait("sampler", 32) == 0.0  # nothing queued for that width
    threading.Timer(0.2, release.set).start()
    assert compiles.wait("sampler", 64) > 0.1 and compiles.waited_s > 0.1
    assert compiles.wait("update", 64) >= 0.0  # failed: the step goes on and compiles it itself
    lines = compiles.report()
    assert lines[0] == "  compiled the sampler (x): 1.0s (in the background)"
    assert "compile of the update for prompt width 64 failed (RuntimeError: out of host memory)" in lines[1]

    release.clear()
    queued = BackgroundCompiles(threads=1)
    queued.submit("sampler", 64, slow)
    queued.submit("update", 64, lambda: ["  not reached"])
    threading.Timer(0.2, release.set).start()
    last = queued.close()[-1]
    assert "background compiles done: 1 of 2 in" in last and "(1 not started before the run ended)" in last


def test_metrics_without_excluded_items_are_those_of_the_evaluation_budget(tiny_model_dir, tmp_path):
    """`--exclude`'s block reports the budget the evaluation used (sampling.eval_max_new_tokens), as the
    whole evaluation does; it said the training budget (the 2026-12-07 HumanEval files: 384 for 768)."""
    import json

    from rlvr_jax.evaluation.evaluate import evaluate

    config = _tiny_config(tiny_model_dir, **{"sampling.eval_max_new_tokens": 12})
    first = evaluate(config, tmp_path / "all", limit=4, quiet=True).rows
    (tmp_path / "exclude.json").write_text(json.dumps({"exclude": [first[0]["id"], "not-an-item"]}))
    result = evaluate(config, tmp_path / "some", limit=4, quiet=True, exclude=tmp_path / "exclude.json")
    without = result.metrics["without_excluded"]
    assert result.metrics["max_new_tokens"] == without["max_new_tokens"] == 12
    assert without["excluded_ids"] == [str(first[0]["id"])] and without["num_items"] == 3


def test_a_run_whose_samples_degenerate_stops_before_training_on_them(tiny_model_dir, tmp_path, monkeypatch):
    """train.max_truncated_in_a_row reaches the loop: steps whose rollouts (here, their metrics) run to the
    token budget after a healthy step stop the run, and no checkpoint of the degenerate steps is written."""
    import rlvr_jax.trainer.loop as loop
    from rlvr_jax.config import RunStopped
    from rlvr_jax.trainer import train

    rates = iter([0.0, 1.0, 1.0, 1.0])
    measured = loop.step_metrics
    cut_off = lambda *a: {**measured(*a), "response/truncation_rate": next(rates)}
    monkeypatch.setattr(loop, "step_metrics", cut_off)
    config = _tiny_config(tiny_model_dir, **{"train.steps": 4, "train.export_hf": False})
    config.train.max_truncated_in_a_row, config.train.checkpoint_every = 2, 1
    with pytest.raises(RunStopped, match=r"degenerated: in each of the last 2 steps \(steps 2-3\)"):
        train(config, tmp_path / "run")
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2]  # step 3 stopped the run before its checkpoint


def test_a_run_whose_updates_are_all_skipped_stops_and_says_why(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Non-finite gradients skip updates (parameters unchanged); a run that skips every one trains nothing,
    so after train.max_skipped_in_a_row such steps it stops with RunStopped (the command line's
    `error: ...`) instead of finishing with an "after" evaluation of the unchanged base model."""
    import rlvr_jax.rl.update as update
    from rlvr_jax.config import RunStopped
    from rlvr_jax.trainer import train

    apply = update.apply_gradients
    monkeypatch.setattr(update, "apply_gradients", lambda s, g, loss, o: apply(s, g, loss * float("nan"), o))
    config = _tiny_config(tiny_model_dir, **{"train.steps": 6, "train.export_hf": False})
    config.train.max_skipped_in_a_row = 2
    # The tiny config's shapes: its sampler and held-out evaluation are the programs the tests above
    # compiled (the persistent compilation cache has them); only the patched update compiles anew.
    config.train.checkpoint_every = 1
    with pytest.raises(
        RunStopped, match=r"last 2 steps \(to step 2\) were all skipped .* not changed since the start"
    ) as stopped:
        train(config, tmp_path / "run")
    # The advice names the switches that rule causes out, each as the config key to set.
    for switch in ("optim.learning_rate", "model.dtype=float32", "model.attention=xla", "model.remat"):
        assert switch in str(stopped.value), switch
    out = capsys.readouterr().out
    assert "step 1: 1 of 1 update(s) skipped for a non-finite loss or gradient" in out
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/skipped_updates" in r]
    assert [r["train/skipped_updates"] for r in rows] == [1, 2]
