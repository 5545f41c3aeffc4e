"""One table and one figure for the GPU learning runs under benchmarks/results/learning/.

    python benchmarks/learning_summary.py   # learning_runs.{json,md,png} in benchmarks/results/

Each run folder is a training workdir as `benchmarks/learning_run.sh` brings it back (config.json,
metrics.jsonl, versions.json, eval/{before,after}); a run may also hold extra evaluations on another
benchmark (qwen_coder_mbpp/humaneval/: trained on MBPP, tested on HumanEval). For every run this gives:
- the command, as the train.py flags that turn the base config into the run's config.json;
- the held-out before / after accuracy with 95% CIs, the paired difference with its CI, the exact McNemar
  p, the share of answers cut off by the budget before / after, and the change among the items finished
  in both runs with its own p: recomputed from the committed samples with scripts/compare.py's code, so
  runs older than the length-aware comparison are judged the same way;
- where one GRPO step's time goes (median over steps after the first two, which compile), and the run's
  minutes and dollars (the trainer's cost metrics; older runs: step times at the card's list price);
- the card and library versions (the run's versions.json; older runs: the same session's train-step
  benchmark, `train_step_h100.json`).
Runs that did not finish stay in the table, marked incomplete with the reason and their base-model
evaluation. Runs listed before they are brought back (`pending`, e.g. the LoRA run, named for whichever
card ran it) are left out until their folder is in benchmarks/results/learning/, and listed as not run.
The markdown table (learning_runs.md) is what README.md and docs/benchmarks.md show.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclasses.dataclass(frozen=True)
class Run:
    """One learning run folder and what a reader needs to know about it."""

    name: str
    benchmark: str  # the row of the cross-benchmark table it belongs to
    base: str  # the config its config.json was made from
    model: str
    trained_on: str
    held_out: str
    label: str
    incomplete: str | None = None  # why the run has no after-training evaluation (it stays in the table)
    pending: bool = False  # planned, maybe not brought back yet: left out while its folder is missing


QWEN = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)"
SMOL = "SmolLM2-135M-Instruct (Q4_1 GGUF)"
NQ_TRAIN, NQ_HELD_OUT = "NQ-open (3,249 carved from validation)", "NQ-open held-out 361"
ARITH_HELD_OUT = "500 arithmetic test problems, 434 of them also training questions"
RUNS: list[Run] = [
    Run("smollm2_arith_quickstart", "arithmetic", "configs/quickstart.py", SMOL, "procedural arithmetic",
        ARITH_HELD_OUT, "SmolLM2-135M, arithmetic: 14 steps of 4 x 6 rollouts (the old quickstart)"),
    Run("smollm2_arith_b128", "arithmetic", "configs/quickstart.py", SMOL, "procedural arithmetic",
        ARITH_HELD_OUT, "SmolLM2-135M, arithmetic: 30 steps of 16 x 8 rollouts"),
    Run("qwen_coder_gsm8k", "GSM8K", "configs/gsm8k.py", QWEN, "GSM8K train", "GSM8K test (1,319)",
        "Qwen2.5-Coder-0.5B, GSM8K test: 200 steps of 16 x 8, eval budget 384 (16% cut off)"),
    Run("qwen_gsm8k_h100", "GSM8K", "configs/gsm8k.py", QWEN, "GSM8K train", "GSM8K test (1,319)",
        "Qwen2.5-Coder-0.5B, GSM8K test: 120 steps of 32 x 8, eval budget 1024"),
    Run("qwen_coder_mbpp", "code", "configs/mbpp.py", QWEN, "MBPP (450 problems)", "MBPP held-out 50",
        "Qwen2.5-Coder-0.5B, MBPP held-out: 120 steps of 8 x 8 rollouts (strict scoring)"),
    Run("qwen_mbpp_h100", "code", "configs/mbpp.py", QWEN, "MBPP (450 problems)", "MBPP held-out 50",
        "Qwen2.5-Coder-0.5B, MBPP: 16 x 8 rollouts, extracted scoring, eval budget 768",
        incomplete="stopped at step 9 of 120 when the device call's budget ran out; the machine was given "
        "back before the next call, so its checkpoint is gone (two new prompt-length compiles took 55 s)"),
    # 2026-12-07, H100 (ran as qwen_mbpp_h100: commands.txt): the run above again from step 0. The first
    # try shared the card with three other runs and ran out of its memory at the first update; the second
    # ran alone, at 40 steps (the 7,680 rollouts of 120 steps of 8 x 8 would not fit the device time left).
    Run("qwen_mbpp_shared_oom_h100", "code", "configs/mbpp.py", QWEN, "MBPP (450 problems)",
        "MBPP held-out 50",
        "Qwen2.5-Coder-0.5B, MBPP: 60 steps of 16 x 8, extracted scoring, beside 3 other runs",
        incomplete="out of device memory at the first update: the H100 was shared with three other runs "
        "(NQ training, two HumanEval evaluations; 71.5 of 80 GB in use); the run alone fitted"),
    Run("qwen_mbpp_extracted_h100", "code", "configs/mbpp.py", QWEN, "MBPP (450 problems)",
        "MBPP held-out 50",
        "Qwen2.5-Coder-0.5B, MBPP: 40 steps of 16 x 8, extracted scoring, eval budget 768"),
    # benchmarks/learning_runs_gpu.sh mbpp_g16 / mbpp_g16_lr5e6 (MBPP_STEPS=40; 2026-12-07, H200, four runs
    # at once on the card): the next two code settings after the extracted run did not learn (groups of
    # 16: 44-88% of its groups of 8, 60% on average, had no reward spread)
    Run("qwen_mbpp_g16_h200", "code", "configs/mbpp.py", QWEN, "MBPP (450 problems)", "MBPP held-out 50",
        "Qwen2.5-Coder-0.5B, MBPP: 40 steps of 8 x 16, lr 2e-6, extracted scoring, eval budget 768"),
    Run("qwen_mbpp_g16_lr5e6_h200", "code", "configs/mbpp.py", QWEN, "MBPP (450 problems)",
        "MBPP held-out 50",
        "Qwen2.5-Coder-0.5B, MBPP: 40 steps of 8 x 16, lr 5e-6, extracted scoring, eval budget 768",
        incomplete="out of device memory at the first update: the H200 held five processes (three other "
        "learning runs and a speed benchmark that had not stopped, 85 GB in use); no device time was left "
        "to run it again"),
    Run("qwen_nq_oom_h100", "Natural Questions", "configs/nq.py", QWEN, NQ_TRAIN, NQ_HELD_OUT,
        "Qwen2.5-Coder-0.5B, NQ-open: 32 x 8 rollouts, qa_f1",
        incomplete="out of memory at the first update: 256 rows x the 152k vocabulary in one pass asked for "
        "104 GiB on the 80 GB card (the run set no micro-batches; now 2 in configs/nq.py, 4 in the script)"),
    # 2026-12-06: three settings, every update skipped for a non-finite gradient (cuDNN's flash backward at
    # 128 + 64 slots, fixed 2026-12-07: benchmarks/results/nonfinite/): kept, and marked so by the
    # skipped-update count in their metrics.
    Run("qwen_nq_h100", "Natural Questions", "configs/nq.py", QWEN, NQ_TRAIN, NQ_HELD_OUT,
        "Qwen2.5-Coder-0.5B, NQ-open: 100 steps of 32 x 8, lr 3e-6"),
    Run("qwen_nq_lr2e5_h100", "Natural Questions", "configs/nq.py", QWEN, NQ_TRAIN, NQ_HELD_OUT,
        "Qwen2.5-Coder-0.5B, NQ-open: 100 steps of 32 x 8, lr 2e-5"),
    Run("qwen_nq_g16_h100", "Natural Questions", "configs/nq.py", QWEN, NQ_TRAIN, NQ_HELD_OUT,
        "Qwen2.5-Coder-0.5B, NQ-open: 100 steps of 32 x 16, lr 1e-5"),
    # benchmarks/learning_runs_gpu.sh nq_fixed (the cuDNN tile padding in place), on whichever card it runs.
    *(Run(f"qwen_nq_fixed_{card}", "Natural Questions", "configs/nq.py", QWEN, NQ_TRAIN, NQ_HELD_OUT,
          "Qwen2.5-Coder-0.5B, NQ-open: 100 steps of 32 x 8, lr 1e-5, cuDNN attention padded to whole tiles",
          pending=True)
      for card in ("h100", "h200")),
    # benchmarks/learning_runs_gpu.sh nq_lr3e6 / nq_drgrpo (NQ_STEPS=50; 2026-12-07, H200, beside the MBPP
    # runs): the next two settings after nq_fixed degenerated
    *(Run(f"qwen_nq_{kind}_h200", "Natural Questions", "configs/nq.py", QWEN, NQ_TRAIN, NQ_HELD_OUT,
          f"Qwen2.5-Coder-0.5B, NQ-open: 50 steps of 32 x 8, lr 3e-6, {adv} advantages")
      for kind, adv in (("lr3e6", "GRPO"), ("drgrpo", "Dr.GRPO"))),
    *(Run(f"smol_nq_{card}", "Natural Questions", "configs/nq.py", SMOL, NQ_TRAIN, NQ_HELD_OUT,
          "SmolLM2-135M, NQ-open: 60 steps of 32 x 8, lr 2e-5, float32", pending=True)
      for card in ("h100", "h200")),
    Run("qwen_sst2_h100", "SST-2", "configs/quickstart.py", QWEN, "SST-2 (80% of 872)",
        "SST-2 held-out 174 (seeded 20%)", "Qwen2.5-Coder-0.5B, SST-2: 60 steps of 16 x 8, lr 3e-6"),
    Run("smol_sst2_h100", "SST-2", "configs/quickstart.py", SMOL, "SST-2 (80% of 872)",
        "SST-2 held-out 174 (seeded 20%)",
        "SmolLM2-135M, SST-2: 30 steps of 16 x 8, lr 3e-5 (the demo's task)"),
    # benchmarks/learning_runs_gpu.sh gsm8k_lora, on whichever card it runs (folder qwen_gsm8k_lora_<card>).
    *(Run(f"qwen_gsm8k_lora_{card}", "GSM8K", "configs/gsm8k.py", QWEN, "GSM8K train", "GSM8K test (1,319)",
          "Qwen2.5-Coder-0.5B, GSM8K test: LoRA rank 64 (alpha 64, lr 2e-5), 60 steps of 32 x 8, eval "
          "budget 1024", pending=True) for card in ("h100", "h200")),
    # benchmarks/learning_runs_gpu.sh gsm8k_lr1e5, on whichever card it runs
    *(Run(f"qwen_gsm8k_lr1e5_{card}", "GSM8K", "configs/gsm8k.py", QWEN, "GSM8K train", "GSM8K test (1,319)",
          "Qwen2.5-Coder-0.5B, GSM8K test: 120 steps of 32 x 8, lr 1e-5, eval budget 1024", pending=True)
      for card in ("h100", "h200")),
]  # fmt: skip
# Extra evaluations inside a run folder (each holds samples.jsonl): (run, before, after, benchmark, label).
TRANSFER: list[tuple[str, str, str, str, str]] = [
    ("qwen_coder_mbpp", "humaneval/before", "humaneval/after_step78", "code",
     "HumanEval (164) after 78 MBPP steps"),
    ("qwen_coder_mbpp", "humaneval/before", "humaneval/after_step120", "code",
     "HumanEval (164) after 120 MBPP steps"),
    ("qwen_mbpp_extracted_h100", "humaneval/before", "humaneval/after", "code",
     "HumanEval (164) after 40 MBPP steps of 16 x 8, extracted scoring, greedy"),
    ("qwen_mbpp_extracted_h100", "humaneval/before_k10", "humaneval/after_k10", "code",
     "HumanEval (164) after 40 MBPP steps of 16 x 8, 10 samples at T 0.8 (mean pass@1)"),
    ("qwen_mbpp_g16_h200", "humaneval/before", "humaneval/after", "code",
     "HumanEval (164) after 40 MBPP steps of 8 x 16, lr 2e-6, extracted scoring, greedy"),
]  # fmt: skip
# Versions of the runs that did not record theirs (2026-11-26/27): the train-step benchmark of that session.
SESSION_HARDWARE = "train_step_h100.json"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys; tuples as lists, as a config.json holds them (model.lora.targets, logging.wandb_tags)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def overrides(base_config: str, config: dict) -> list[str]:
    """The --config.KEY=VALUE flags that turn `base_config` into `config` (a run's config.json)."""
    spec = importlib.util.spec_from_file_location("base", ROOT / base_config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = _flatten(module.get_config().to_dict())
    flags = []
    for key, value in _flatten(config).items():
        if key not in base or base[key] != value:
            flags.append(f"--config.{key}={value}")
    return flags


def step_split(metrics_file: Path, skip: int = 2) -> dict[str, Any]:
    """Median seconds per GRPO step in rollout / reward / update, and the throughputs, from metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "time/step_s" in r]
    if len(steps) <= skip:
        raise ValueError(f"{metrics_file}: only {len(steps)} training steps logged")
    by_step = {r["step"]: r for r in steps}  # a resumed run logs the steps after its checkpoint again
    kept = [by_step[s] for s in sorted(by_step)][skip:]

    def med(key: str) -> float | None:
        values = [r[key] for r in kept if isinstance(r.get(key), int | float)]
        return round(statistics.median(values), 4) if values else None

    split = {
        "steps": len(by_step),
        "step_s": med("time/step_s"),
        "rollout_s": med("time/rollout_s"),
        "reward_s": med("time/reward_s"),
        "update_s": med("time/train_s"),
        "rollout_tokens_per_s": med("throughput/rollout_tokens_per_s"),
        "update_tokens_per_s": med("throughput/train_tokens_per_s"),
        "update_mfu": med("throughput/mfu"),
        "train_wall_s": round(sum(r["time/step_s"] for r in by_step.values()), 1),
    }
    # The mean counts what the median leaves out: compiles (each new prompt-length bucket), slow sandboxes.
    split["mean_step_s"] = round(split["train_wall_s"] / len(by_step), 4)
    if split["step_s"]:
        parts = ("rollout_s", "reward_s", "update_s")
        split["share"] = {p[:-2]: round((split[p] or 0) / split["step_s"], 3) for p in parts}
    first = [by_step[s]["reward/mean"] for s in sorted(by_step)[:10]]
    last = [by_step[s]["reward/mean"] for s in sorted(by_step)[-10:]]
    split["train_reward_first10_last10"] = [round(statistics.mean(first), 3), round(statistics.mean(last), 3)]
    return split


def _shown(path: Path, results: Path) -> str:
    """A path as the repository shows it (benchmarks/results/...), wherever --results points."""
    return f"benchmarks/results/{path.relative_to(results).as_posix()}"


def _interval(stat: dict[str, Any]) -> dict[str, Any]:
    return {"value": stat["value"], "low": stat["ci_low"], "high": stat["ci_high"], "method": stat["method"]}


def _number(x: float | None) -> float | None:
    """None for a missing or undefined (NaN: no finished answer) value, so the JSON stays valid."""
    return None if x is None or math.isnan(x) else x


def comparison(before: Path, after: Path, results: Path) -> dict[str, Any]:
    """Before / after of one run, recomputed from the two evaluations' samples with the comparison
    scripts/compare.py makes (older runs' own comparison.json predates the length-aware part)."""
    from rlvr_jax.evaluation.compare import compare_runs
    from rlvr_jax.evaluation.runs import load_run

    c = compare_runs(load_run(before), load_run(after))
    both = c["finished_in_both"]
    return {
        "n": c["paired_items"],
        "before": _interval(c["a"]["accuracy"]),
        "after": _interval(c["b"]["accuracy"]),
        "difference": _interval(c["accuracy_difference"]),
        "test": c["test"],
        "p_value": c["p_value"],
        "significant_at_0.01": c["p_value"] < 0.01,
        "truncation": {"before": c["truncation"]["a"], "after": c["truncation"]["b"]},
        "finished_in_both": {
            "n": both["n"],
            "before": _number(both["accuracy_a"]),
            "after": _number(both["accuracy_b"]),
            "p_value": both["p_value"],
        },
        "accuracy_finished": {
            "before": _number((c["a"].get("accuracy_finished") or {}).get("value")),
            "after": _number((c["b"].get("accuracy_finished") or {}).get("value")),
        },
        # the task's own reward (token F1 for NQ; equal to accuracy for pass / fail rewards)
        "mean_reward": {
            "before": c["a"]["mean_reward"]["value"],
            "after": c["b"]["mean_reward"]["value"],
            "difference": _interval(c["reward_difference"]),
            "p_value": c["reward_permutation_p"],
        },
        "length_effect": c["length_effect"],
        "verdict": c["verdict"],
        "samples": [_shown(before / "samples.jsonl", results), _shown(after / "samples.jsonl", results)],
    }


def before_only(folder: Path, results: Path) -> dict[str, Any]:
    """An unfinished run's evaluation: the base model's held-out numbers, nothing after."""
    m = json.loads((folder / "metrics.json").read_text())
    finished = m.get("accuracy_finished") or {}
    return {
        "n": m["num_items"],
        "before": _interval(m["accuracy"]),
        "after": None,
        "truncation": {"before": m.get("truncation_rate"), "after": None},
        "accuracy_finished_before": finished.get("value") if finished.get("n") else None,
        "tokens_for_95_finished": m.get("tokens_for_95_finished"),
        "max_new_tokens": m.get("max_new_tokens"),
        "samples": [_shown(folder / "samples.jsonl", results), None],
    }


def updates_applied(metrics_file: Path) -> dict[str, int] | None:
    """Steps logged and updates skipped (non-finite loss or gradient, `train/skipped_updates`) in a run.

    A run whose updates were all skipped never changed its policy: its "after" is the base model again,
    however the table reads. None for runs from before the counter existed.
    """
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    key = "train/skipped_updates"
    counted = {r["step"]: r[key] for r in rows if r.get(key) is not None}
    if not counted:
        return None
    last = max(counted)
    return {"steps": last, "skipped": int(counted[last])}


def cost(metrics_file: Path, price: float, split: dict[str, Any] | None) -> dict[str, Any]:
    """Device hours and dollars of a run: the trainer's own cost/* (whole run, resumes included), else the
    sum of step times at `price` (runs from before cost tracking; evaluations and compiles left out)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    tracked = [r for r in rows if "cost/usd_total" in r]
    if tracked:
        last = max(tracked, key=lambda r: r["cost/device_hours"])
        hours, usd, how = last["cost/device_hours"], last["cost/usd_total"], "the trainer's cost/* metrics"
    elif split:
        hours = split["train_wall_s"] / 3600
        usd, how = hours * price, f"sum of step times at ${price:.2f}/h (evaluations not counted)"
    else:
        return {"minutes": None, "usd": None, "source": "no step finished"}
    return {"minutes": round(60 * hours, 1), "usd": round(usd, 3), "source": how}


def hardware(folder: Path, results: Path) -> dict[str, Any]:
    """The card and library versions the run recorded (versions.json), else its session's benchmark's."""
    own = folder / "versions.json"
    record = json.loads((own if own.exists() else results / SESSION_HARDWARE).read_text())
    return {"device": record["device"], "versions": record["versions"]}


def summarise_run(run: Run, results: Path) -> dict[str, Any]:
    from rlvr_jax.monitoring.cost import device_price

    folder = results / "learning" / run.name
    config = json.loads((folder / "config.json").read_text())
    hw = hardware(folder, results)
    try:
        split = step_split(folder / "metrics.jsonl")
    except ValueError:
        split = None  # stopped before its third step
    out = {
        "name": run.name,
        "benchmark": run.benchmark,
        "label": run.label,
        "model": run.model,
        "trained_on": run.trained_on,
        "held_out": run.held_out,
        "command": " ".join(
            [
                "python scripts/train.py",
                f"--config={run.base}",
                f"--workdir=runs/{run.name}",
                *overrides(run.base, config),
            ]
        ),
        **hw,
        "step_split": split,
        "cost": cost(folder / "metrics.jsonl", device_price(hw["device"] or "")[0] or 0.0, split),
        "folder": _shown(folder, results),
        "updates": updates_applied(folder / "metrics.jsonl"),
    }
    if run.incomplete:
        out["incomplete"] = run.incomplete
        out["evaluation"] = before_only(folder / "eval" / "before", results)
    else:
        out["evaluation"] = comparison(folder / "eval" / "before", folder / "eval" / "after", results)
    return out


def table_row(run: dict[str, Any], label: str, ev: dict[str, Any]) -> dict[str, Any]:
    """One line of the cross-benchmark table."""
    trunc = ev.get("truncation") or {}
    both = ev.get("finished_in_both") or {}
    return {
        "benchmark": run["benchmark"],
        "run": run["name"],
        "label": label,
        "n": ev["n"],
        "before": ev["before"],
        "after": ev.get("after"),
        "difference": ev.get("difference"),
        "p_value": ev.get("p_value"),
        "truncated_before": trunc.get("before"),
        "truncated_after": trunc.get("after"),
        "finished_in_both": both or None,
        "minutes": run["cost"]["minutes"],
        "usd": run["cost"]["usd"],
        "device": run["device"],
        "status": "incomplete: " + run["incomplete"] if run.get("incomplete") else "done",
        "updates": run.get("updates"),
        "samples": ev.get("samples"),
        "mean_reward": ev.get("mean_reward"),
    }


def graded_note(row: dict[str, Any]) -> str | None:
    """For a task whose reward is graded (NQ's token F1), not pass / fail: its mean before and after with
    the paired permutation p, the measure a run there can move (exact match rarely does); None where the
    mean reward is the accuracy (a reward of 0 or 1) or there is no after."""
    r = row.get("mean_reward")
    if not r or r.get("after") is None or abs(r["before"] - row["before"]["value"]) < 1e-9:
        return None
    return f"mean reward {r['before']:.3f} -> {r['after']:.3f}, p = {r['p_value']:.2g}"


def skipped_note(row: dict[str, Any]) -> str | None:
    """What a reader must know when a run skipped updates (non-finite gradients), else None."""
    updates = row.get("updates") or {}
    n, k = updates.get("steps"), updates.get("skipped")
    if not k:
        return None
    return f"all {n} updates skipped: the policy never changed" if k >= n else f"{k} of {n} updates skipped"


def degenerate_note(row: dict[str, Any]) -> str | None:
    """A run whose answers went from mostly finished to (nearly) all cut off by the budget: the policy
    degenerated (repetition or junk until the budget), whatever its accuracy says. None otherwise. The
    same rule, with the same thresholds, as the trainer's stop (`rlvr_jax.trainer.step.DegeneratePolicy`),
    applied to the held-out evaluations before and after."""
    from rlvr_jax.trainer.step import DegeneratePolicy

    before, after = row.get("truncated_before"), row.get("truncated_after")
    if before is None or after is None:
        return None
    if not (after >= DegeneratePolicy.threshold and before < DegeneratePolicy.healthy):
        return None
    return f"degenerated: {100 * after:.0f}% of answers cut off after training"


def marked_label(row: dict[str, Any], bold: bool) -> str:
    """The row's label with its skipped-update or degenerate-policy note: bold "(...)" in the table when
    no update applied or the policy degenerated, "[...]" in the figure."""
    graded = graded_note(row)
    label = f"{row['label']} ({graded})" if graded else row["label"]
    note = skipped_note(row) or degenerate_note(row)
    if note is None:
        return label
    if not bold:
        return f"{label} [{note}]"
    return f"{label} **({note})**" if note.startswith(("all", "degenerated")) else f"{label} ({note})"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as README / docs show it."""

    def pct(x: float | dict | None) -> str:
        x = x["value"] if isinstance(x, dict) else x
        return "-" if x is None else f"{100 * x:.1f}%"

    def shown(x: float | None) -> str:
        return "-" if x is None else str(x)

    lines = [
        "| benchmark | run | n | before | after | difference (95% CI) | p | cut off before / after "
        "| finished in both: before / after (p) | minutes | US$ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["difference"]
        diff = "-" if not d else f"{100 * d['value']:+.1f} ({100 * d['low']:+.1f}, {100 * d['high']:+.1f})"
        both = r["finished_in_both"]
        if both and not both.get("n"):
            fin = "none finished in both"
        else:
            fin = "-" if not both else f"{pct(both['before'])} / {pct(both['after'])} ({both['p_value']:.2g})"
        p = "-" if r["p_value"] is None else f"{r['p_value']:.2g}"
        label = marked_label(r, bold=True) + (" **(incomplete)**" if r["status"] != "done" else "")
        cut = f"{pct(r['truncated_before'])} / {pct(r['truncated_after'])}"
        lines.append(
            f"| {r['benchmark']} | {label} | {r['n']} | {pct(r['before'])} | {pct(r['after'])} | {diff} "
            f"| {p} | {cut} | {fin} | {shown(r['minutes'])} | {shown(r['usd'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    results = Path(args.results)
    present = [run for run in RUNS if not run.pending or (results / "learning" / run.name).is_dir()]
    not_run = [run.name for run in RUNS if run not in present]
    runs = [summarise_run(run, results) for run in present]
    by_name = {r["name"]: r for r in runs}
    table = [table_row(r, r["label"], r["evaluation"]) for r in runs]
    for name, before, after, benchmark, label in TRANSFER:
        if name not in by_name:  # a pending run not brought back yet (listed under not_run)
            continue
        folder = results / "learning" / name
        ev = comparison(folder / before, folder / after, results)
        by_name[name].setdefault("transfer", []).append({"label": label, **ev})
        table.append(table_row({**by_name[name], "benchmark": benchmark}, f"Qwen2.5-Coder-0.5B: {label}", ev))
    order = {b: i for i, b in enumerate(dict.fromkeys(r.benchmark for r in present))}
    table.sort(key=lambda r: order[r["benchmark"]])
    record = {
        "benchmark": "GRPO learning runs with real weights, before / after on held-out sets",
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/learning_summary.py (runs: benchmarks/learning_run.sh NAME FLAGS)",
        "table": table,
        "runs": runs,
        "not_run": not_run,  # planned runs not brought back yet
    }
    (results / "learning_runs.json").write_text(json.dumps(record, indent=1) + "\n")
    (results / "learning_runs.md").write_text(markdown(table) + "\n")

    from rlvr_jax.evaluation.plots import plot_before_after

    plotted = [
        {**r, "test": "McNemar", "label": marked_label(r, bold=False)}
        for r in table
        if r["after"] is not None
    ]
    title = "GRPO on one H100 or H200: held-out accuracy before and after"
    png = plot_before_after(plotted, results / "learning_runs.png", title=title)
    print(markdown(table))
    print(f"wrote {results / 'learning_runs.json'}, {results / 'learning_runs.md'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
