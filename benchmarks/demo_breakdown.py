"""Where a training run's held-out gain comes from: per class, finished vs cut off, paired test.

    python benchmarks/demo_breakdown.py runs/quickstart [--out benchmarks/results/x.json]

Reads WORKDIR/eval/before and WORKDIR/eval/after (the trainer writes both) and prints, for each: accuracy,
the share of answers cut off by the token budget, accuracy among the answers that finished, and for
classification tasks (samples with a `label`) accuracy per class and the share of each predicted label, so
a gain that is only a change of default answer ("positive" for everything) or only shorter answers shows
as such. The paired exact McNemar test is the one `scripts/compare.py` reports. Used to choose the
`make demo` setting (benchmarks/results/demo_search_cpu.json).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.config import saved_config
from rlvr_jax.data import get_task
from rlvr_jax.data.base import load_samples
from rlvr_jax.evaluation.stats import mcnemar_exact, mcnemar_table


def read_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """First sample of each held-out item, by item id."""
    rows: dict[str, dict[str, Any]] = {}
    with (folder / "samples.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows.setdefault(row["id"], row)
    return rows


def predicted(reason: str) -> str:
    """The label the reward read, from its reason ("correct label 1", "wrong label 0, gold 1")."""
    if "label" in reason and reason.split("label", 1)[1].strip()[:1].isdigit():
        return reason.split("label", 1)[1].strip()[0]
    return "none"


def breakdown(rows: dict[str, dict[str, Any]], labels: dict[str, int] | None) -> dict[str, Any]:
    items = list(rows.values())
    finished = [r for r in items if r.get("finished")]
    out: dict[str, Any] = {
        "n": len(items),
        "accuracy": sum(r["passed"] for r in items) / len(items),
        "truncated_share": 1 - len(finished) / len(items),
        "finished_correct": sum(r["passed"] for r in finished),
        "finished": len(finished),
        "accuracy_among_finished": (sum(r["passed"] for r in finished) / len(finished)) if finished else None,
        "mean_response_tokens": sum(r["num_tokens"] for r in items) / len(items),
    }
    if labels is not None:
        per_class = collections.defaultdict(list)
        for item_id, r in rows.items():
            per_class[str(labels[item_id])].append(r["passed"])
        out["per_class_accuracy"] = {k: sum(v) / len(v) for k, v in sorted(per_class.items())}
        out["per_class_n"] = {k: len(v) for k, v in sorted(per_class.items())}
        counts = collections.Counter(predicted(r["reason"]) for r in items)
        out["predicted_share"] = {k: v / len(items) for k, v in sorted(counts.items())}
        out["balanced_accuracy"] = sum(out["per_class_accuracy"].values()) / len(per_class)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--out", type=Path, help="also write the breakdown as JSON here")
    args = parser.parse_args()
    before, after = read_rows(args.workdir / "eval" / "before"), read_rows(args.workdir / "eval" / "after")
    config = saved_config(args.workdir)
    samples = load_samples(get_task(config.data.task), config, config.data.eval_split)
    labels = {s["id"]: s["label"] for s in samples} if samples and "label" in samples[0] else None
    ids = sorted(before.keys() & after.keys())
    _, only_before, only_after, _ = mcnemar_table(
        [before[i]["passed"] for i in ids], [after[i]["passed"] for i in ids]
    )
    result = {
        "workdir": str(args.workdir),
        "before": breakdown(before, labels),
        "after": breakdown(after, labels),
        "paired": {
            "n": len(ids),
            "only_before_right": only_before,
            "only_after_right": only_after,
            "mcnemar_exact_p": mcnemar_exact(only_before, only_after),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
