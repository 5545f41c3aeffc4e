"""HumanEval items that MBPP training items nearly copy, and HumanEval accuracy with and without them.

    python benchmarks/near_duplicates.py     # writes benchmarks/results/mbpp_humaneval_near_duplicates.json

A pair is listed when the MBPP training item's reference solution, called under HumanEval's entry-point
name, passes all of HumanEval's tests in the sandbox (`rlvr_jax/evaluation/contamination.py` says why
behaviour and not word overlap). The MBPP items are the training split configs/mbpp.py reads from
--mbpp (default ../shared/data/mbpp: MBPP's test file, 450 of whose 500 items that config trains on);
with the hub's MBPP, pass a folder holding its train split. The JSON's `exclude` is the list
`scripts/evaluate.py --exclude` reads. For the committed MBPP -> HumanEval measurement
(benchmarks/results/learning/qwen_coder_mbpp/humaneval) it also gives accuracy before and after on all 164
items and without the listed ones, with the exact McNemar test on each, from the samples already there.
45 minutes on a busy 2-core CPU (2026-12-05): 37,207 pairs that can be called alike, one sandboxed program
each, and a 20 s second try for those out of time (23 still were: `undecided_after_retry`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlvr_jax.data import get_task  # noqa: E402
from rlvr_jax.data.base import load_samples  # noqa: E402
from rlvr_jax.evaluation.contamination import candidate_pairs, functional_duplicates  # noqa: E402
from rlvr_jax.evaluation.metrics import passed  # noqa: E402
from rlvr_jax.evaluation.runs import load_run  # noqa: E402
from rlvr_jax.evaluation.stats import mcnemar_exact, mcnemar_table, wilson_interval  # noqa: E402

SHARED = Path(os.environ.get("RLVR_SHARED", ROOT.parent / "shared"))
MEASURED = ROOT / "benchmarks/results/learning/qwen_coder_mbpp/humaneval"
RUNS = {"after 78 steps": "after_step78", "after 120 steps": "after_step120"}


def _accuracy(outcomes: dict[str, bool]) -> dict[str, Any]:
    interval = wilson_interval(sum(outcomes.values()), len(outcomes))
    return {"n": len(outcomes), "accuracy": interval.value, "ci_low": interval.low, "ci_high": interval.high}


def before_after(before: dict[str, bool], after: dict[str, bool]) -> dict[str, Any]:
    ids = sorted(before.keys() & after.keys())
    table = mcnemar_table([before[i] for i in ids], [after[i] for i in ids])
    _, only_before, only_after, _ = table
    return {
        "before": _accuracy({i: before[i] for i in ids}),
        "after": _accuracy({i: after[i] for i in ids}),
        "only_before_solves": only_before,
        "only_after_solves": only_after,
        "mcnemar_exact_p": mcnemar_exact(only_before, only_after),
    }


def measured_with_and_without(exclude: set[str]) -> dict[str, Any]:
    """The committed HumanEval evaluations of the MBPP-trained model: all items, and without `exclude`."""
    outcome = lambda name: {str(r["id"]): passed(float(r["reward"])) for r in load_run(MEASURED / name).rows}
    before = outcome("before")
    out = {}
    for label, folder in RUNS.items():
        after = outcome(folder)
        kept = lambda d: {i: v for i, v in d.items() if i not in exclude}
        out[label] = {
            "all": before_after(before, after),
            "without_near_duplicates": before_after(kept(before), kept(after)),
            "near_duplicates": {i: {"before": before.get(i), "after": after.get(i)} for i in sorted(exclude)},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbpp", default=str(SHARED / "data" / "mbpp"), help="MBPP data (data.path)")
    parser.add_argument("--humaneval", default=str(SHARED / "data" / "humaneval"), help="HumanEval data")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mbpp_humaneval_near_duplicates.json"))
    args = parser.parse_args()

    config = runpy.run_path(str(ROOT / "configs" / "mbpp.py"))["get_config"]()
    config.data.path = args.mbpp
    mbpp = load_samples(get_task("mbpp"), config, config.data.train_split)
    humaneval = get_task("humaneval").load("test", args.humaneval)
    total = len(candidate_pairs(mbpp, humaneval))
    print(f"{len(mbpp)} MBPP training items x {len(humaneval)} HumanEval items: {total} same-arity pairs")
    t0 = time.perf_counter()
    report = lambda done, n: print(f"  {done}/{n} pairs run, {time.perf_counter() - t0:.0f} s", flush=True)
    scan = functional_duplicates(mbpp, humaneval, on_batch=report)
    pairs = scan.pairs
    exclude = sorted({p["humaneval"] for p in pairs}, key=lambda i: int(i.split("/")[1]))
    result = {
        "what": "HumanEval items whose tests an MBPP training item's reference solution passes",
        "method": (
            "rlvr_jax.evaluation.contamination.functional_duplicates: each MBPP reference solution, renamed "
            "to the HumanEval entry point, run against HumanEval's check in the sandbox (code_humaneval "
            "reward, 2 s per program, 20 s on a retry of those that time out); only pairs whose "
            "functions take as many positional arguments"
        ),
        "command": "python benchmarks/near_duplicates.py",
        "created": datetime.date.today().isoformat(),
        "mbpp": {
            "source": os.path.relpath(args.mbpp, ROOT),
            "config": "configs/mbpp.py",
            "split": config.data.train_split,
            "items": len(mbpp),
        },
        "humaneval": {
            "source": os.path.relpath(args.humaneval, ROOT),
            "split": "test",
            "items": len(humaneval),
        },
        "pairs_run": scan.programs,
        "undecided_after_retry": [list(p) for p in scan.undecided],
        "seconds": round(time.perf_counter() - t0, 1),
        "pairs": pairs,
        "exclude": exclude,
    }
    if MEASURED.is_dir():
        result["measured_mbpp_to_humaneval"] = measured_with_and_without(set(exclude))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(pairs)} pairs, {len(exclude)} HumanEval items: {', '.join(exclude)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
