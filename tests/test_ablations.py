"""benchmarks/ablations.py: the arms' configs, the budget's stop and resume, the summary's statistics."""

from __future__ import annotations

import json
import math
import signal
import sys
import tarfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks import ablations as ab
from rlvr_jax.config import ConfigError
from rlvr_jax.evaluation.metrics import eval_metrics
from rlvr_jax.evaluation.runs import EvalRun
from rlvr_jax.evaluation.stats import mcnemar_exact
from tests.test_trainer import tiny_model_dir  # noqa: F401  (a fixture)
from tests.tiny import REPO

# ------------------------------------------------------------------------------------------------ arms


def test_arms_change_only_what_they_are_named_for_and_keep_the_rollouts_per_step(tmp_path):
    planned, record = ab.make_plan("configs/gsm8k.py", [], list(ab.ARMS), [0, 1], tmp_path)
    settings = ab.arm_settings(ab.build_config("configs/gsm8k.py", []))
    grpo = settings["grpo"]
    assert grpo["rl.clip_low"] == grpo["rl.clip_high"] == 0.2  # not the base's 0.28 (DAPO's clip-higher)
    for arm, values in settings.items():
        changed = {k for k in values if values[k] != grpo.get(k)}
        assert values["rl.prompts_per_step"] * values["rl.group_size"] == 16 * 8, arm
        expected = {
            "grpo": set(),
            "dr_grpo": {"rl.advantage", "rl.aggregation"},
            "rloo": {"rl.advantage"},
            "dapo": {
                "rl.clip_high",
                "rl.dynamic_sampling",
                "rl.aggregation",
                "reward.name",
                "reward.options",
            },
            "gspo": {"rl.ratio_type", "rl.clip_low", "rl.clip_high"},
            "kl": {"rl.beta"},
            "group4": {"rl.group_size", "rl.prompts_per_step"},
            "group16": {"rl.group_size", "rl.prompts_per_step"},
        }[arm]
        assert changed == expected, arm
    assert settings["dapo"]["reward.options"] == {
        "components": {"numeric": 1.0, "overlong": 1.0},
        "component_options": {"overlong": {"max_len": 384, "buffer": 76}},
    }
    # Round robin: seed 0 of every arm first; only dapo is evaluated again with the base's reward.
    assert [(r["arm"], r["seed"]) for r in planned[:9]] == [(a, 0) for a in ab.ARMS] + [("grpo", 1)]
    assert record["rescored"] == ["dapo"] and [r["arm"] for r in planned if r["evaluate"]] == ["dapo"] * 2
    evaluate = planned[3]["evaluate"]
    assert "--config.reward.name=numeric" in evaluate and "--config.reward.options={}" in evaluate
    assert "--limit=256" in evaluate and evaluate[-1].endswith("dapo/seed0/eval/after_base_reward")
    assert "--config.seed=1" in planned[8]["train"] and record["notes"][0].startswith("rl.mu = 1")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--config.rl.clip_hihg=0.2"], "did you mean rl.clip_high"),
        (["--config.rl.clip_high=wide"], "could not convert string to float: 'wide'"),
        (["--config.rl.group_size=1"], "rl.group_size must be >= 2"),
        (["rl.beta=0.1"], "is not a --config.KEY=VALUE flag"),
    ],
)
def test_a_bad_base_flag_stops_the_plan_with_its_reason(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        ab.make_plan("configs/gsm8k.py", flags, ["grpo"], [0], tmp_path)


def test_a_group_size_that_does_not_divide_the_rollouts_is_an_error_for_that_arm_only(tmp_path):
    flags = ["--config.rl.prompts_per_step=3", "--config.rl.group_size=4", "--config.optim.micro_batches=1"]
    with pytest.raises(ConfigError, match="group16: the base's 12 rollouts per step"):
        ab.make_plan("configs/gsm8k.py", flags, ["grpo", "group16"], [0], tmp_path)
    planned, _ = ab.make_plan("configs/gsm8k.py", flags, ["grpo", "group4"], [0], tmp_path)
    assert "--config.rl.prompts_per_step=3" in planned[1]["train"][-4:-2]


def test_command_line_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert ab.main(["--runs", str(tmp_path)]) == 2
    assert "error: --base is required" in capsys.readouterr().err
    assert ab.main(["--runs", str(tmp_path), "--summarise"]) == 2
    assert f"error: {tmp_path} holds no plan.json" in capsys.readouterr().err


def test_a_runs_folder_of_another_base_is_refused(tmp_path):
    planned, record = ab.make_plan("configs/gsm8k.py", [], ["grpo"], [0], tmp_path)
    ab.record_plan(tmp_path, record, planned)
    planned, record = ab.make_plan("configs/gsm8k.py", ["--config.rl.mu=2"], ["grpo"], [0], tmp_path)
    with pytest.raises(ConfigError, match="holds the runs of another base"):
        ab.record_plan(tmp_path, record, planned)


# ---------------------------------------------------------------------------------------------- budget


def test_the_budget_sends_sigterm_to_the_group_and_sigkill_after_the_grace(tmp_path):
    log = tmp_path / "log.txt"
    graceful = (
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\ntime.sleep(60)"
    )
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    t0 = time.monotonic()
    assert ab.run_until([sys.executable, "-c", "print('done')"], log, t0 + 30, 5) == (0, False)
    assert ab.run_until([sys.executable, "-c", graceful], log, time.monotonic() + 1.0, 5) == (3, True)
    t1 = time.monotonic()
    assert ab.run_until([sys.executable, "-c", stubborn], log, t1 + 1.0, 1.0) == (-signal.SIGKILL, True)
    assert 2.0 <= time.monotonic() - t1 < 10
    assert log.read_text().count("=== ") == 3 and "done" in log.read_text()


# --------------------------------------------------------------------------------------------- summary


def _eval(passes: int, n: int = 40, finished: int = 36) -> EvalRun:
    """A greedy evaluation of n items: the first `passes` right, the first `finished` finished."""
    rows = [
        {
            "id": f"q{i}",
            "reward": float(i < passes),
            "finished": i < finished,
            "num_tokens": 20 if i < finished else 64,
        }
        for i in range(n)
    ]
    metrics = {"task": "gsm8k", "split": "test", "reward": "numeric", **eval_metrics(rows, reward="numeric")}
    return EvalRun(Path("runs/x/eval/after"), metrics, rows)


def _run(passes: int, step_s: float, before: int | None = 12) -> dict:
    return {
        "after": _eval(passes),
        "before": None if before is None else _eval(before),
        "steps": {"steps": 30, "step_s": step_s, "rollout_s": step_s / 2, "update_s": step_s / 3},
        "command": "python scripts/train.py ...",
    }


def test_summary_means_over_seeds_pairs_items_with_grpo_and_keeps_incomplete_arms():
    seeds = [0, 1, 2]
    found = {
        "grpo": {s: _run(16 + s, 1.0 + s / 10) for s in seeds},
        "dr_grpo": {s: _run(24 + s, 1.2, before=None) for s in seeds},  # 8 more right answers per seed
        "kl": {0: _run(16, 2.0)},  # seed 1 failed, seed 2 never ran
    }
    plan = {"base": "configs/gsm8k.py", "base_flags": [], "arms": ["grpo", "dr_grpo", "kl"], "seeds": seeds,
            "arm_flags": {"grpo": ["--config.rl.clip_high=0.2"]}, "rescored": [], "notes": []}  # fmt: skip
    calls = [{"date": "2026-12-05", "command": "python benchmarks/ablations.py ...", "card": "NVIDIA H200",
              "versions": {"jax": "0.11.2"}, "budget_s": 500}]  # fmt: skip
    segments = [{"arm": "kl", "seed": 0, "card": "NVIDIA H200"}]
    record = ab.summarise(
        {"plan": plan, "calls": calls, "segments": segments, "found": found, "failed": {"kl": [1]}}
    )
    arms = {a["name"]: a for a in record["arms"]}
    assert list(arms) == ["grpo", "dr_grpo", "kl"] and record["incomplete"] == ["kl"]
    assert record["card"] == "NVIDIA H200" and record["versions"] == {"jax": "0.11.2"}

    # Mean over seeds with Student's t interval: the seeds are the units.
    accuracies = [(24 + s) / 40 for s in seeds]
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(accuracies), scale=scipy_stats.sem(accuracies))
    mean = arms["dr_grpo"]["accuracy"]
    assert mean["value"] == pytest.approx(np.mean(accuracies)) and mean["n_seeds"] == 3
    assert (mean["low"], mean["high"]) == (pytest.approx(low), pytest.approx(high))
    assert arms["dr_grpo"]["accuracy_finished"]["value"] == pytest.approx(
        np.mean([(24 + s) / 36 for s in seeds])
    )
    assert arms["grpo"]["step_s"] == {"median_over_seeds": 1.1, "per_seed": [1.0, 1.1, 1.2]}

    # Paired against grpo over (seed, item) pairs: 8 items per seed only dr_grpo gets right.
    versus = arms["dr_grpo"]["versus_grpo"]
    assert versus["paired_items"] == 120 and versus["seeds"] == seeds
    assert versus["discordant"] == {"only_a_passes": 0, "only_b_passes": 24}
    assert versus["p_value"] == pytest.approx(mcnemar_exact(0, 24)) and versus["test"] == "mcnemar_exact"
    assert versus["difference"]["value"] == pytest.approx(0.2)
    assert versus["finished_in_both"]["n"] == 3 * 36 and versus["length_effect"] == "holds"
    assert versus["per_seed_difference"] == {str(s): pytest.approx(0.2) for s in seeds}
    assert versus["seed_sign_flip_p"] == pytest.approx(0.25)  # 3 seeds: the smallest p there is
    assert (
        versus["seed_difference"]["value"] == pytest.approx(0.2) and versus["seed_difference"]["n_seeds"] == 3
    )
    assert (
        arms["dr_grpo"]["collapsed_seeds"] == [] and arms["dr_grpo"]["runs"][0]["modal_answer_share"] is None
    )
    assert arms["grpo"]["versus_grpo"] is None

    # An incomplete arm is kept: its seed, no interval from one value, the failed seed named.
    kl = arms["kl"]
    assert kl["complete"] is False and kl["seeds_finished"] == [0] and kl["seeds_failed"] == [1]
    assert kl["accuracy"]["value"] == 0.4 and math.isnan(kl["accuracy"]["low"])
    assert kl["versus_grpo"]["seeds"] == [0] and kl["versus_grpo"]["p_value"] == 1.0
    assert kl["runs"][0]["cards"] == ["NVIDIA H200"]
    assert record["before_training"]["per_seed"] == {"0": 0.3, "1": 0.3, "2": 0.3}
    assert record["before_training"]["largest_difference_between_arms"] == 0.0  # the same base model

    assert json.loads(ab.strict_json(record))["arms"][2]["accuracy"]["low"] is None  # NaN: null


def test_a_seed_that_collapsed_to_one_answer_is_flagged_and_the_seed_level_interval_shows_its_spread():
    def answered(passes: int, labels: list[str]) -> dict:
        run = _run(passes, 1.0)
        rows = [
            {**row, "completion": f' "{label}" '}
            for row, label in zip(run["after"].rows, labels, strict=True)
        ]
        run["after"] = EvalRun(run["after"].path, run["after"].metrics, rows)
        return run

    mixed = ["positive", "negative"] * 20
    found = {
        "grpo": {s: answered(30, mixed) for s in range(3)},
        # rloo: two seeds as good as grpo, one that says "Positive" to 39 of 40 items and "negative" once
        "rloo": {
            0: answered(30, mixed),
            1: answered(30, mixed),
            2: answered(20, ["Positive"] * 39 + ["negative"]),
        },
    }
    plan = {"base": "b", "base_flags": [], "arms": ["grpo", "rloo"], "seeds": [0, 1, 2], "arm_flags": {},
            "rescored": [], "notes": []}  # fmt: skip
    record = ab.summarise({"plan": plan, "calls": [], "segments": [], "found": found, "failed": {}})
    rloo = record["arms"][1]
    assert rloo["collapsed_seeds"] == [2] and record["arms"][0]["collapsed_seeds"] == []
    collapsed = rloo["runs"][2]
    assert collapsed["modal_answer"] == "positive" and collapsed["modal_answer_share"] == pytest.approx(
        39 / 40
    )
    assert rloo["runs"][0]["modal_answer_share"] == 0.5 and not rloo["runs"][0]["collapsed"]
    # Over (seed, item) pairs the one bad seed is 10 discordant items against none: "significant". Over
    # seeds, differences 0, 0, -0.25: the interval spans zero, which is the ablation's honest answer.
    versus = rloo["versus_grpo"]
    assert versus["p_value"] < 0.01
    seed_diff = versus["seed_difference"]
    assert seed_diff["value"] == pytest.approx(-0.25 / 3) and seed_diff["low"] < 0 < seed_diff["high"]


def test_the_figure_draws_complete_and_incomplete_arms(tmp_path):
    found = {arm: {s: _run(14 + 2 * i + s, 1.0 + i / 10) for s in range(3 if i % 3 else 2)} for i, arm in
             enumerate(ab.ARMS)}  # fmt: skip
    plan = {"base": "b", "base_flags": [], "arms": list(ab.ARMS), "seeds": [0, 1, 2], "arm_flags": {},
            "rescored": [], "notes": []}  # fmt: skip
    calls = [{"date": "d", "command": "c", "card": "NVIDIA H200", "versions": {}, "budget_s": 1}]
    record = ab.summarise({"plan": plan, "calls": calls, "segments": [], "found": found, "failed": {}})
    assert record["incomplete"] == [a for i, a in enumerate(ab.ARMS) if not i % 3]
    png = ab.plot_ablations(record, tmp_path / "ablations.png")
    assert png.stat().st_size > 30_000


# ------------------------------------------------------------------------------------------ end to end

# The base: the quickstart config with the tiny random model, 3 steps of 2 prompts x 4 rollouts, without
# the warm-up compile of every prompt bucket (each of the five train.py processes would compile both). In the
# train.py processes of the first call, SIGTERM stays blocked (the test blocks it; children inherit the
# mask) until the first step has ended: the budget's signal, sent half a second after the start, then
# lands exactly there, as if the budget had run out during step 1, whatever the speed of the machine.
CONFIG = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from configs.quickstart import get_config as quickstart
from rlvr_jax import checkpointing

if os.environ.get("ABLATION_TEST_STOP_IN_STEP_1") and sys.argv[0].endswith("train.py"):
    should_stop = checkpointing.PreemptionHandler.should_stop

    def stop_in_step_1(self, step):
        if step == 1:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGTERM}})
            for _ in range(600):
                if self.requested:
                    break
                time.sleep(0.05)
        return should_stop(self, step)

    checkpointing.PreemptionHandler.should_stop = stop_in_step_1


def get_config(arg=None):
    return quickstart(arg)
"""


def test_runs_stop_at_the_budget_resume_from_their_checkpoint_and_are_skipped_once_finished(
    tmp_path,
    tiny_model_dir,  # noqa: F811
    shared_dir,
    monkeypatch,
    capsys,
):
    config = tmp_path / "base.py"
    config.write_text(CONFIG.format(repo=str(REPO)))
    runs, out = tmp_path / "runs", tmp_path / "out" / "ablations_cpu.json"
    # The suite's persistent compilation cache (tests/conftest.py; $RLVR_JAX_CACHE when set).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(jax.config.jax_compilation_cache_dir))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    base = [f"--base={config}:tiny", "--base_flags", f"--config.model.path={tiny_model_dir}",
            f"--config.data.path={shared_dir / 'data' / 'sst2'}", "--config.rl.prompts_per_step=2",
            "--config.rl.group_size=4", "--config.train.steps=3",
            "--config.logging.tensorboard=False", "--config.train.warmup_compile=False"]  # fmt: skip
    common = ["--runs", str(runs), "--out", str(out), "--arms", "grpo", "dapo", "--min_start_s", "0"]

    # Call 1: seed 1 first; the budget stops grpo seed 1 in step 1, and nothing else starts.
    monkeypatch.setenv("ABLATION_TEST_STOP_IN_STEP_1", "1")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        assert ab.main([*common, "--seeds", "1", "0", "--budget_s", "0.5", "--grace_s", "300", *base]) == 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    monkeypatch.delenv("ABLATION_TEST_STOP_IN_STEP_1")
    printed = capsys.readouterr().out
    assert "start grpo seed 1 (new)" in printed and "stopped grpo seed 1 at the budget" in printed
    segments = ab.json_lines(runs / "segments.jsonl")
    assert [(g["arm"], g["seed"], g["outcome"], g["checkpoint"]) for g in segments] == [
        ("grpo", 1, "stopped", 1)
    ]
    assert not (runs / "grpo" / "seed0" / "train.log").exists()
    first = json.loads(out.read_text())
    assert first["incomplete"] == ["grpo", "dapo"] and all(not a["seeds_finished"] for a in first["arms"])

    # Call 2: everything left, in rounds over seed 0 then 1; grpo seed 1 resumes after step 1.
    assert ab.main([*common, "--seeds", "0", "1", "--budget_s", "500", *base]) == 0
    printed = capsys.readouterr().out
    assert (
        "start grpo seed 1 (resumes after step 1)" in printed and "every planned run is finished" in printed
    )
    order = [(g["arm"], g["seed"], g["stage"]) for g in ab.json_lines(runs / "segments.jsonl")[1:]]
    assert order == [("grpo", 0, "train"), ("dapo", 0, "train"), ("dapo", 0, "evaluate"),
                     ("grpo", 1, "train"), ("dapo", 1, "train"), ("dapo", 1, "evaluate")]  # fmt: skip
    resumed = runs / "grpo" / "seed1"
    assert "resumed from" in (resumed / "train.log").read_text()
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "time/step_s" in r] == [1, 2, 3]  # each training step once

    # dapo trained on its shaped reward; its accuracy is the base reward's, on the same items: the trainer's
    # own evaluation already scores a weighted sum with the task's reward (reward.eval_name), and the
    # runner's re-scoring of the final checkpoint checks it.
    rescored = runs / "dapo" / "seed0" / "eval"
    shaped, plain = (
        json.loads((rescored / f / "metrics.json").read_text()) for f in ("after", "after_base_reward")
    )
    assert shaped["reward"] == plain["reward"] == "label"
    ids = [[json.loads(x)["id"] for x in (rescored / f / "samples.jsonl").read_text().splitlines()]
           for f in ("after", "after_base_reward")]  # fmt: skip
    assert ids[0] == ids[1] and len(ids[0]) == 8

    record = json.loads(out.read_text())
    arms = {a["name"]: a for a in record["arms"]}
    assert record["incomplete"] == [] and record["seeds"] == [0, 1]
    assert (
        record["card"]
        and record["versions"]["jax"]
        and record["date"]
        and "--budget_s 500" in record["command"]
    )
    for arm in arms.values():
        assert arm["seeds_finished"] == [0, 1] and arm["complete"] and arm["accuracy"]["n_seeds"] == 2
        assert all(r["steps"] == 3 and r["step_s"] > 0 for r in arm["runs"])
        assert all(r["command"].startswith("python scripts/train.py --config=") for r in arm["runs"])
    assert [r["evaluation"] for r in arms["dapo"]["runs"]] == ["eval/after_base_reward"] * 2
    assert arms["dapo"]["versus_grpo"]["paired_items"] == 16 and arms["dapo"]["versus_grpo"]["warnings"] == []
    assert out.with_suffix(".png").stat().st_size > 20_000

    # Call 3: nothing to do; finished runs are not touched; the archive leaves checkpoints out.
    touched = (runs / "dapo" / "seed1" / "eval" / "after_base_reward" / "metrics.json").stat().st_mtime_ns
    archive = tmp_path / "out" / "runs.tgz"
    assert ab.main([*common, "--seeds", "0", "1", "--archive", str(archive), *base]) == 0
    assert "4 finished, 0 failed before" in capsys.readouterr().out
    assert len(ab.json_lines(runs / "segments.jsonl")) == 7
    assert (
        runs / "dapo" / "seed1" / "eval" / "after_base_reward" / "metrics.json"
    ).stat().st_mtime_ns == touched
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert "runs/dapo/seed1/eval/after_base_reward/samples.jsonl" in names
    assert not [n for n in names if "checkpoints" in n or n.endswith(".png")]
    # The archive is a runs folder the summary reads elsewhere (here: after the device call).
    again = tmp_path / "unpacked" / "again.json"
    assert ab.main(["--summarise", "--runs", str(tmp_path / "unpacked" / "runs"), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["arms"] == json.loads(out.read_text())["arms"]


def test_parallel_runs_overlap_and_each_gets_its_share_of_device_memory(tmp_path):
    """--parallel 2: two runs are alive at once (each stub waits for the other's start before it finishes,
    so run one after the other the first would give up and fail), and each process is told its share."""
    wait_for_other = (
        "import json, os, pathlib, sys, time\n"
        "me, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "(me / 'started').write_text(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', ''))\n"
        "t = time.monotonic()\n"
        "while not (other / 'started').exists():\n"
        "    if time.monotonic() - t > 60: sys.exit(1)\n"
        "    time.sleep(0.05)\n"
        "(me / 'eval' / 'after').mkdir(parents=True)\n"
        "(me / 'eval' / 'after' / 'metrics.json').write_text('{}')\n"
    )
    a, b = tmp_path / "grpo" / "seed0", tmp_path / "rloo" / "seed0"
    for d in (a, b):
        d.mkdir(parents=True)
    planned = [
        {"arm": arm, "seed": 0, "workdir": me, "evaluate": None,
         "train": [sys.executable, "-c", wait_for_other, str(me), str(other)]}
        for arm, me, other in (("grpo", a, b), ("rloo", b, a))
    ]  # fmt: skip
    ab.run_plan(planned, tmp_path, budget_s=120, grace_s=5, min_start_s=0, retry_failed=False, card="cpu",
                parallel=2)  # fmt: skip
    segments = ab.json_lines(tmp_path / "segments.jsonl")
    assert sorted((s["arm"], s["outcome"], s["parallel"]) for s in segments) == [
        ("grpo", "finished", 2), ("rloo", "finished", 2)
    ]  # fmt: skip
    assert (a / "started").read_text() == (b / "started").read_text() == "0.450"
