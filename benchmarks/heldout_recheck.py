"""The committed learning runs' held-out accuracy again, without the items the held-out check removes.

    python benchmarks/heldout_recheck.py     # writes benchmarks/results/heldout_recheck_learning_runs.json

The runs under benchmarks/results/learning/ were evaluated before the trainer dropped evaluation items
that repeat or whose question training asks (`rlvr_jax/data/heldout.py`). Their samples.jsonl keep each
item's prompt, so this rebuilds each run's training prompts from its saved config.json (the arithmetic
generator, or the ../shared copy of the data set where the run's data.path is not here), applies the same
check to the evaluated items, and gives accuracy before and after on all of them and on those that remain,
with the exact McNemar test on each. Reads; trains and generates nothing. About 30 s on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.near_duplicates import before_after  # noqa: E402
from rlvr_jax.config import saved_config  # noqa: E402
from rlvr_jax.data import get_task  # noqa: E402
from rlvr_jax.data.base import load_samples  # noqa: E402
from rlvr_jax.data.heldout import drop_seen  # noqa: E402
from rlvr_jax.evaluation.metrics import passed  # noqa: E402
from rlvr_jax.evaluation.runs import load_run  # noqa: E402

SHARED = Path(os.environ.get("RLVR_SHARED", ROOT.parent / "shared"))
LEARNING = ROOT / "benchmarks/results/learning"


def recheck(run: Path) -> dict[str, Any]:
    """One run: what the check removes from its evaluated items, and accuracy with and without them."""
    config = saved_config(run)
    task = get_task(config.data.task)
    if config.data.path is not None and not Path(config.data.path).exists():
        config.data.path = str(SHARED / "data" / Path(config.data.path).name)
    train = load_samples(task, config, config.data.train_split)
    before, after = load_run(run / "eval" / "before"), load_run(run / "eval" / "after")
    items = list({str(r["id"]): {"id": str(r["id"]), "prompt": r["prompt"]} for r in after.rows}.values())
    kept, counts = drop_seen(train, items, task.procedural)
    outcome = lambda rows: {str(r["id"]): passed(float(r["reward"])) for r in rows}
    keep = {s["id"] for s in kept}
    a, b = outcome(before.rows), outcome(after.rows)
    return {
        "task": task.name,
        "eval_split": config.data.eval_split,
        "options": dict(config.data.options),
        "training_prompts": len(train),
        "evaluated": len(items),
        "removed": counts,
        "remain": len(kept),
        "all": before_after(a, b),
        "held_out_only": before_after(
            {i: v for i, v in a.items() if i in keep}, {i: v for i, v in b.items() if i in keep}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/heldout_recheck_learning_runs.json"))
    args = parser.parse_args()
    runs = sorted(
        p for p in LEARNING.iterdir() if (p / "config.json").is_file() and (p / "eval/after").is_dir()
    )
    result = {"what": __doc__.splitlines()[0], "command": "python benchmarks/heldout_recheck.py", "runs": {}}
    for run in runs:
        r = result["runs"][run.name] = recheck(run)
        show = lambda c: (
            f"{c['before']['accuracy']:.3f} -> {c['after']['accuracy']:.3f} (p={c['mcnemar_exact_p']:.2g})"
        )
        print(
            f"{run.name}: {r['evaluated']} evaluated, removed {r['removed']}; all {show(r['all'])}; "
            f"held-out only (n={r['remain']}) {show(r['held_out_only'])}"
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
