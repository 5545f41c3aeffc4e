"""Re-score the committed code evaluations (per-sample completions) strictly and with the solution extracted.

    python benchmarks/rescore_code.py [--data ../shared/data] [--out FILE]

The Qwen2.5-Coder MBPP run's evaluations under benchmarks/results/learning/qwen_coder_mbpp/ hold every
completion (samples.jsonl): HumanEval (164) before training and after 78 / 120 steps, and the 50 MBPP
held-out problems before / after. Each completion is scored again here, on this machine's sandbox, by the
code reward both ways (`program="strict"`: the whole code block as one program; `"extracted"`: the
solution, without the model's own tests and demo code, see rlvr_jax/rewards/code_extract.py), and each
before / after pair is compared with the exact McNemar test on the same items. The verdicts recorded in
the files came from the harness of their day (one process per program); `recorded` keeps them for
reference. Sample ids join the data set's test split (MBPP's held-out items are test ids), so the result
does not depend on how the held-out split was carved. Writes
benchmarks/results/learning/code_extraction.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlvr_jax.data import get_task  # noqa: E402
from rlvr_jax.evaluation.stats import mcnemar_exact, mcnemar_table  # noqa: E402
from rlvr_jax.rewards import get_reward  # noqa: E402

RUN = REPO / "benchmarks" / "results" / "learning" / "qwen_coder_mbpp"
# (name, task, before folder, after folder) relative to RUN
PAIRS = [
    ("humaneval_step78", "humaneval", "humaneval/before", "humaneval/after_step78"),
    ("humaneval_step120", "humaneval", "humaneval/before", "humaneval/after_step120"),
    ("mbpp_heldout_step120", "mbpp", "eval/before", "eval/after"),
]


def read_rows(folder: Path) -> list[dict[str, Any]]:
    with open(folder / "samples.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(task: str, rows: list[dict[str, Any]], data: Path, timeout_s: float) -> dict[str, Any]:
    """Both verdicts per row, in row order: {"strict": [...], "extracted": [...], "reasons": ...}."""
    by_id = {s["id"]: s for s in get_task(task).load("test", data)}
    samples = [by_id[str(r["id"])] for r in rows]
    reward = get_reward(get_task(task).reward)
    result = reward([r["completion"] for r in rows], samples, report_strict=True, timeout_s=timeout_s)
    strict = result.variants["strict"]
    return {
        "ids": [str(r["id"]) for r in rows],
        "extracted": [bool(x >= 1.0) for x in result.scores],
        "strict": [bool(x >= 1.0) for x in strict.scores],
        "recorded": [bool(r["passed"]) for r in rows],
        "truncated": sum(not r["finished"] for r in rows),
        "reasons": result.reasons,
        "strict_reasons": strict.reasons,
    }


def compare(before: dict[str, Any], after: dict[str, Any], key: str) -> dict[str, Any]:
    if before["ids"] != after["ids"]:
        raise ValueError("before and after hold different items")
    a, b = before[key], after[key]
    both, only_before, only_after, neither = mcnemar_table(a, b)
    n = len(a)
    return {
        "before": round(sum(a) / n, 4),
        "after": round(sum(b) / n, 4),
        "passed_before": sum(a),
        "passed_after": sum(b),
        "mcnemar_table": {
            "both": both,
            "only_before": only_before,
            "only_after": only_after,
            "neither": neither,
        },
        "mcnemar_p": round(mcnemar_exact(only_before, only_after), 4),
    }


def changed(run: dict[str, Any]) -> dict[str, Any]:
    """Completions whose verdict extraction changes, with the strict reason (why the whole block failed)."""
    rows = zip(run["ids"], run["strict"], run["extracted"], run["strict_reasons"], strict=True)
    fixed = {i: why for i, s, e, why in rows if e and not s}
    broken = [i for i, s, e in zip(run["ids"], run["strict"], run["extracted"], strict=True) if s and not e]
    return {"strict_fail_extracted_pass": fixed, "strict_pass_extracted_fail": broken}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RUN.parent / "code_extraction.json")
    parser.add_argument("--timeout", type=float, default=30.0, help="per program (a busy machine is slow)")
    args = parser.parse_args()
    scored: dict[str, dict[str, Any]] = {}
    for _, task, *folders in PAIRS:
        for folder in folders:
            if folder not in scored:
                scored[folder] = score(task, read_rows(RUN / folder), args.data, args.timeout)
    out: dict[str, Any] = {
        "what": (
            "The Qwen2.5-Coder-0.5B MBPP run's code evaluations re-scored from their samples.jsonl: strict "
            "(the whole code block as one program) and extracted (the solution: imports, functions, classes "
            "and the values they use, without the model's own tests and demo code; unclosed fences closed)"
        ),
        "run": str(RUN.relative_to(REPO)),
        "command": "python benchmarks/rescore_code.py",
        "timeout_s": args.timeout,
        "date": dt.date.today().isoformat(),
        "comparisons": {},
        "evaluations": {},
    }
    for name, task, before, after in PAIRS:
        out["comparisons"][name] = {
            "task": task,
            "before": before,
            "after": after,
            "n": len(scored[before]["ids"]),
            **{
                key: compare(scored[before], scored[after], key)
                for key in ("strict", "extracted", "recorded")
            },
        }
    for folder, run in scored.items():
        out["evaluations"][folder] = {
            "n": len(run["ids"]),
            "strict": sum(run["strict"]),
            "extracted": sum(run["extracted"]),
            "recorded": sum(run["recorded"]),
            "truncated": run["truncated"],  # cut off by the 384-token budget
            "extraction_changed_the_program": sum("[extracted: " in why for why in run["reasons"]),
            "closed_an_unclosed_fence": sum("closed the code fence" in why for why in run["reasons"]),
            "timeouts": sum("timeout" in why for why in run["reasons"] + run["strict_reasons"]),
            **changed(run),
        }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, comparison in out["comparisons"].items():
        line = ", ".join(
            f"{key} {c['before']:.3f} -> {c['after']:.3f} (p={c['mcnemar_p']})"
            for key, c in ((k, comparison[k]) for k in ("recorded", "strict", "extracted"))
        )
        print(f"{name} (n={comparison['n']}): {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
