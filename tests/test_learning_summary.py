"""benchmarks/learning_summary.py: the learning-run table is read from what the runs wrote, faithfully."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import learning_summary as ls
from tests.tiny import REPO


def test_summary_of_the_committed_runs(tmp_path):
    results = REPO / "benchmarks" / "results"
    shutil.copytree(results / "learning", tmp_path / "learning")
    shutil.copy(results / "train_step_h100.json", tmp_path)
    assert ls.main(["--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "learning_runs.json").read_text())
    runs = {r["name"]: r for r in record["runs"]}
    back = {run.name for run in ls.RUNS if (results / "learning" / run.name).is_dir()}
    assert {run.name for run in ls.RUNS if not run.pending} <= back  # a run that is not pending is committed
    assert set(runs) == back
    assert set(record["not_run"]) == {run.name for run in ls.RUNS} - back  # pending, not brought back yet
    assert all(("H100" in r["device"] or "H200" in r["device"]) for r in runs.values())
    assert all(r["versions"]["jax"] for r in runs.values())
    gsm8k = runs["qwen_coder_gsm8k"]
    assert gsm8k["evaluation"]["n"] == 1319 and gsm8k["evaluation"]["test"] == "mcnemar_exact"
    assert gsm8k["evaluation"]["significant_at_0.01"] == (gsm8k["evaluation"]["p_value"] < 0.01)
    assert "--config.model.path=/root/models/qwen.gguf" in gsm8k["command"]
    for run in runs.values():
        split = run["step_split"]
        if split:
            assert split["rollout_s"] + split["update_s"] <= split["step_s"] * 1.05
            assert split["mean_step_s"] >= split["step_s"] * 0.9
    assert len(runs["qwen_coder_mbpp"]["transfer"]) == 2
    # The committed numbers, recomputed from the samples: the old GSM8K run's 16% cut-off answers, and the
    # new run's 2% with the gain holding among finished answers.
    table = {(r["run"], r["label"]): r for r in record["table"]}
    new = next(r for (name, _), r in table.items() if name == "qwen_gsm8k_h100")
    assert new["truncated_before"] < 0.05 and new["finished_in_both"]["p_value"] < 0.01
    assert round(new["after"]["value"] - new["before"]["value"], 3) == round(new["difference"]["value"], 3)
    for row in record["table"]:  # every row links the samples it was computed from, which exist
        linked = [tmp_path / p.removeprefix("benchmarks/results/") for p in row["samples"] if p]
        assert linked and all(p.exists() for p in linked)
    incomplete = [r for r in record["table"] if r["status"] != "done"]
    assert {r["run"] for r in incomplete} == {run.name for run in ls.RUNS if run.incomplete}
    assert all(r["after"] is None and r["before"]["value"] >= 0 for r in incomplete)
    markdown = (tmp_path / "learning_runs.md").read_text()
    assert markdown.count("\n") == len(record["table"]) + 2 and "**(incomplete)**" in markdown
    assert (tmp_path / "learning_runs.png").stat().st_size > 10_000


def test_step_split_counts_a_resumed_step_once(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.2}]
    for step in range(1, 7):
        rows.append({"step": step, "time/step_s": 1.0, "time/rollout_s": 0.6, "time/reward_s": 0.1,
                     "time/train_s": 0.3, "reward/mean": 0.1 * step})  # fmt: skip
    rows.append(dict(rows[-1]))  # logged again after a resume from step 6's checkpoint
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    split = ls.step_split(path)
    assert split["steps"] == 6 and split["train_wall_s"] == 6.0
    assert split["share"] == {"rollout": 0.6, "reward": 0.1, "update": 0.3}
    with pytest.raises(ValueError, match="only 1 training steps"):
        path.write_text(json.dumps(rows[1]))
        ls.step_split(path)


def test_overrides_are_exactly_the_changed_keys():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gsm8k", REPO / "configs" / "gsm8k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config().to_dict()
    assert ls.overrides("configs/gsm8k.py", config) == []
    config["optim"]["learning_rate"] = 3e-6
    config["train"]["steps"] = 7
    assert ls.overrides("configs/gsm8k.py", config) == [
        "--config.optim.learning_rate=3e-06",
        "--config.train.steps=7",
    ]


def test_a_pending_lora_run_is_summarised_once_its_folder_is_back(tmp_path):
    """The LoRA run's folder (here the GSM8K run's, with the LoRA run's settings in its config.json) gives
    its row and its command: the flags that differ, and none for tuples config.json holds as lists."""
    results = REPO / "benchmarks" / "results"
    folder = tmp_path / "learning" / "qwen_gsm8k_lora_h200"
    shutil.copytree(results / "learning" / "qwen_gsm8k_h100", folder)
    config = json.loads((folder / "config.json").read_text())
    targets = ["q", "k", "v", "o", "gate", "up", "down"]  # the default tuple, as config.json writes it
    config["model"]["lora"] = {"rank": 64, "alpha": 64.0, "targets": targets}
    config["optim"]["learning_rate"], config["train"]["steps"] = 2e-5, 60
    (folder / "config.json").write_text(json.dumps(config))
    run = next(r for r in ls.RUNS if r.name == folder.name)
    assert run.pending and run.benchmark == "GSM8K"
    summary = ls.summarise_run(run, tmp_path)
    flags = summary["command"].split()
    assert "--config.model.lora.rank=64" in flags and "--config.model.lora.alpha=64.0" in flags
    assert "--config.optim.learning_rate=2e-05" in flags and "--config.train.steps=60" in flags
    assert not [f for f in flags if "targets" in f or "wandb_tags" in f], flags
    assert summary["evaluation"]["n"] == 1319 and summary["step_split"]["steps"] > 0


def test_a_run_whose_updates_were_all_skipped_is_marked(tmp_path):
    """The NQ runs of 2026-12-06 skipped every update (non-finite gradient): before == after, and a table
    that showed only "+0.0, p = 1" would read as "RL does not help here" instead of "nothing was trained"."""
    rows = [{"step": 0, "eval/accuracy": 0.1}]
    rows += [{"step": s, "train/skipped_updates": s} for s in range(1, 5)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert ls.updates_applied(path) == {"steps": 4, "skipped": 4}
    (tmp_path / "old.jsonl").write_text(json.dumps({"step": 1, "time/step_s": 1.0}))
    assert ls.updates_applied(tmp_path / "old.jsonl") is None  # runs from before the counter

    def row(updates):
        return {"benchmark": "b", "label": "run", "n": 10, "before": 0.5, "after": 0.5, "difference": None,
                "p_value": 1.0, "truncated_before": 0.0, "truncated_after": 0.0, "finished_in_both": None,
                "minutes": 1, "usd": 0.1, "status": "done", "updates": updates}  # fmt: skip

    table = ls.markdown([row({"steps": 4, "skipped": 4}), row({"steps": 4, "skipped": 1}), row(None)])
    lines = table.splitlines()[2:]
    assert "all 4 updates skipped: the policy never changed" in lines[0]
    assert "(1 of 4 updates skipped)" in lines[1]
    assert "skipped" not in lines[2]
    committed = json.loads((REPO / "benchmarks" / "results" / "learning_runs.json").read_text())
    nq = {r["name"]: r for r in committed["runs"] if r["benchmark"] == "Natural Questions"}
    assert nq["qwen_nq_h100"]["updates"] == {"steps": 100, "skipped": 100}


def test_a_run_whose_answers_degenerated_is_marked_and_its_json_stays_valid(tmp_path):
    """The NQ run of 2026-12-07 (lr 1e-5) went from 0.3% to 100% of answers cut off: junk until the budget.
    Its accuracy fell only 0.6 points, which a table of accuracies alone would show as "no change"."""

    def row(before, after, both=None):
        return {"benchmark": "b", "label": "run", "n": 10, "before": 0.5, "after": 0.4,
                "difference": None, "p_value": 0.5, "truncated_before": before, "truncated_after": after,
                "finished_in_both": both, "minutes": 1, "usd": 0.1, "status": "done",
                "updates": {"steps": 4, "skipped": 0}}  # fmt: skip

    lines = ls.markdown([row(0.003, 1.0, {"n": 0}), row(0.0, 0.5), row(0.95, 0.97)]).splitlines()[2:]
    assert "**(degenerated: 100% of answers cut off after training)**" in lines[0]
    assert "none finished in both" in lines[0]
    assert "degenerated" not in lines[1] and "degenerated" not in lines[2]  # cut off before too: not new
    assert ls._number(float("nan")) is None and ls._number(0.25) == 0.25

    results = REPO / "benchmarks" / "results"
    record = json.loads((results / "learning_runs.json").read_text(), parse_constant=pytest.fail)
    runs = {r["name"]: r for r in record["runs"]}
    nq = runs["qwen_nq_fixed_h100"]["evaluation"]
    assert nq["truncation"]["after"] == 1.0 and nq["accuracy_finished"]["after"] is None
    assert nq["mean_reward"]["after"] < nq["mean_reward"]["before"] and nq["mean_reward"]["p_value"] < 0.01
    assert runs["qwen_nq_fixed_h100"]["updates"] == {"steps": 100, "skipped": 0}  # updates did apply


def test_a_graded_reward_is_shown_beside_accuracy_and_a_pass_fail_one_is_not():
    """NQ's token F1: exact match hardly moves, the mean reward is what a run there can change, so the
    table's label carries it with its permutation p; for a 0/1 reward (mean reward = accuracy) nothing."""
    row = {"label": "NQ run", "before": {"value": 0.006}, "after": {"value": 0.006},
           "mean_reward": {"before": 0.0498, "after": 0.0628, "p_value": 0.1137}}
    assert ls.graded_note(row) == "mean reward 0.050 -> 0.063, p = 0.11"
    assert ls.marked_label(row, bold=True) == "NQ run (mean reward 0.050 -> 0.063, p = 0.11)"
    binary = {**row, "before": {"value": 0.25}, "mean_reward": {"before": 0.25, "after": 0.3, "p_value": 0.2}}
    assert ls.graded_note(binary) is None and ls.marked_label(binary, bold=True) == "NQ run"
    assert ls.graded_note({**row, "mean_reward": None}) is None
