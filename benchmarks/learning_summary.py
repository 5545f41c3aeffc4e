"""One table and one figure for the GPU learning runs under benchmarks/results/learning/.

    python benchmarks/learning_summary.py            # writes learning_runs_h100.json and .png there

Each run folder is a training workdir as `benchmarks/learning_run.sh` brings it back (config.json,
metrics.jsonl, eval/{before,after,compare}); a run may also hold extra comparisons on another benchmark
(e.g. qwen_coder_mbpp/humaneval/compare_step120: trained on MBPP, tested on HumanEval). For every run this
reads, never recomputes, what the trainer and scripts/compare.py wrote:
- the command, as the train.py flags that turn the base config into the run's config.json;
- the held-out before / after accuracy with 95% CIs, the paired difference with its CI, the test and p;
- where one GRPO step's time goes (median over steps after the first two, which compile): rollout,
  reward (the wait for it: scoring overlaps the next rollout), update, and the total, with rollout
  tokens/s and the update's MFU; and the mean step, compiles and slow sandbox calls included.
The card and library versions come from the train-step benchmark run on the same machine in the same
session (`train_step_h100.json`), since the learning runs do not record them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# run folder -> (base config, model, what it trains on, held-out set of its own evaluation)
RUNS: dict[str, tuple[str, str, str, str]] = {
    "smollm2_arith_quickstart": (
        "configs/quickstart.py", "SmolLM2-135M-Instruct (Q4_1 GGUF)", "procedural arithmetic",
        "500 arithmetic test problems, 434 of them also training questions",
    ),
    "smollm2_arith_b128": (
        "configs/quickstart.py", "SmolLM2-135M-Instruct (Q4_1 GGUF)", "procedural arithmetic",
        "500 arithmetic test problems, 434 of them also training questions",
    ),
    "qwen_coder_gsm8k": (
        "configs/gsm8k.py", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)", "GSM8K train", "GSM8K test (1,319)",
    ),
    "qwen_coder_mbpp": (
        "configs/mbpp.py", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)", "MBPP (450 problems)",
        "MBPP held-out 50",
    ),
}  # fmt: skip
LABELS = {
    "smollm2_arith_quickstart": "SmolLM2-135M, arithmetic: 14 steps of 4 x 6 rollouts (quickstart)",
    "smollm2_arith_b128": "SmolLM2-135M, arithmetic: 30 steps of 16 x 8 rollouts",
    "qwen_coder_gsm8k": "Qwen2.5-Coder-0.5B, GSM8K test: 200 steps of 16 x 8 rollouts",
    "qwen_coder_mbpp": "Qwen2.5-Coder-0.5B, MBPP held-out: 120 steps of 8 x 8 rollouts",
}
# Extra comparisons inside a run folder: (run, sub-folder, label).
TRANSFER: list[tuple[str, str, str]] = [
    ("qwen_coder_mbpp", "humaneval/compare_step78", "HumanEval (164) after 78 MBPP steps"),
    ("qwen_coder_mbpp", "humaneval/compare_step120", "HumanEval (164) after 120 MBPP steps"),
]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
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


def comparison(folder: Path, results: Path) -> dict[str, Any]:
    c = json.loads((folder / "comparison.json").read_text())

    def acc(run: dict) -> dict:
        a = run["accuracy"]
        return {"value": a["value"], "low": a["ci_low"], "high": a["ci_high"], "method": a["method"]}

    d = c["accuracy_difference"]
    return {
        "n": c["paired_items"],
        "before": acc(c["a"]),
        "after": acc(c["b"]),
        "difference": {"value": d["value"], "low": d["ci_low"], "high": d["ci_high"], "method": d["method"]},
        "test": c["test"],
        "p_value": c["p_value"],
        "significant_at_0.01": c["p_value"] < 0.01,
        "verdict": c["verdict"],
        "report": _shown(folder / "report.md", results),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    results = Path(args.results)
    learning = results / "learning"
    hardware = json.loads((results / "train_step_h100.json").read_text())
    runs, rows = [], []
    for name, (base, model, train_on, held_out) in RUNS.items():
        folder = learning / name
        config = json.loads((folder / "config.json").read_text())
        run = {
            "name": name,
            "model": model,
            "trained_on": train_on,
            "command": " ".join(
                [
                    "python scripts/train.py",
                    f"--config={base}",
                    f"--workdir=runs/{name}",
                    *overrides(base, config),
                ]
            ),
            "step_split": step_split(folder / "metrics.jsonl"),
            "held_out": held_out,
            "evaluation": comparison(folder / "eval" / "compare", results),
            "folder": _shown(folder, results),
        }
        runs.append(run)
        ev = run["evaluation"]
        rows.append({"label": LABELS[name], **ev, "test": "McNemar"})
    for name, sub, label in TRANSFER:
        ev = comparison(learning / name / sub, results)
        next(r for r in runs if r["name"] == name).setdefault("transfer", []).append({"label": label, **ev})
        rows.append({"label": f"Qwen2.5-Coder-0.5B: {label}", **ev, "test": "McNemar"})  # fmt: skip
    record = {
        "benchmark": "GRPO learning runs with real weights, before / after on held-out sets",
        "device": hardware["device"],
        "versions": hardware["versions"],
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/learning_summary.py (runs: benchmarks/learning_run.sh NAME FLAGS)",
        "runs": runs,
    }
    (results / "learning_runs_h100.json").write_text(json.dumps(record, indent=1) + "\n")

    from rlvr_jax.evaluation.plots import plot_before_after

    png = plot_before_after(
        rows, results / "learning_runs_h100.png", title="GRPO on one H100: held-out accuracy before and after"
    )
    for run in runs:
        e, s = run["evaluation"], run["step_split"]
        print(
            f"{run['name']:26s} {100 * e['before']['value']:5.1f}% -> {100 * e['after']['value']:5.1f}% "
            f"(n={e['n']}, p={e['p_value']:.2g}); step {s['step_s']} s = rollout {s['rollout_s']} + "
            f"reward {s['reward_s']} + update {s['update_s']}"
        )
    print(f"wrote {results / 'learning_runs_h100.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
