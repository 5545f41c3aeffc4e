"""Compare two evaluation runs with paired significance tests and write a report with plots.

    python scripts/compare.py RUN_A RUN_B [--out DIR] [--json]
    python scripts/compare.py runs/eval/base runs/eval/trained --out runs/compare

RUN_A / RUN_B: folders written by scripts/evaluate.py (samples.jsonl + metrics.json), or training workdirs
(their final evaluation, WORKDIR/eval/after; WORKDIR/eval/before is the model before training). B is
compared against A on the items both scored: the accuracy difference with a 95% paired bootstrap
interval, the exact McNemar p-value for one pass / fail sample per item (a paired permutation test
otherwise), and the same for the mean reward; then the same test on the items finished in both runs (a
cut-off answer scores 0), each run's truncated share, and a sentence saying whether a significant change
holds among finished answers or is mostly answers that now fit the token budget (the rule:
`rlvr_jax.evaluation.compare.length_effect`). Writes OUT/report.md, OUT/comparison.json and PNG plots
(accuracy with intervals and the paired outcomes, response lengths, training reward curves when a run
comes from training, accuracy by level when the data has levels). Default OUT: RUN_B/compare.
Exit status 0 whatever the verdict; 2 for unusable input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if not __package__:  # run as a file (python scripts/compare.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-compare` command."""
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="the baseline: an evaluate.py --out folder or a training workdir")
    parser.add_argument("run_b", help="the candidate, compared against RUN_A")
    parser.add_argument("--out", help="report folder (default: RUN_B/compare)")
    parser.add_argument("--examples", type=int, default=3, help="disagreeing items shown per direction")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)

    def run() -> int:
        from rlvr_jax.evaluation.compare import compare_runs, write_report
        from rlvr_jax.evaluation.runs import load_run

        a, b = load_run(args.run_a), load_run(args.run_b)
        result = compare_runs(a, b)
        out = Path(args.out) if args.out else b.path / "compare"
        report = write_report(a, b, result, out, examples=args.examples)
        (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(result["verdict"])
            for warning in result["warnings"]:
                print(f"warning: {warning}")
        print(f"report: {report}")
        return 0

    return fail_cleanly(run)


if __name__ == "__main__":
    sys.exit(main())
