"""Compare live prompts (and responses, outcomes) with a reference such as the training data: is it drift?

    python scripts/drift.py --reference ../shared/data/gsm8k/train.jsonl --reference_field question \\
        --live ../shared/data/gsm8k/test.jsonl --live_field question
    python scripts/drift.py --reference train.jsonl --reference_field question --save_profile profile.json
    python scripts/drift.py --profile profile.json --live traffic.jsonl --live_field prompt \\
        --live_output_field completion --live_outcome_field passed

Prints a JSON report: `"drift": true|false` first, then for every feature (prompt / response lengths in
characters and words, the word distribution, the pass rate) each statistic with its value, threshold and
whether it was exceeded, and the sample sizes. What the statistics are, how the default thresholds were
chosen and how the verdict is reached: rlvr_jax/monitoring/drift.py. `--save_profile` writes the
reference's profile (what `scripts/serve.py --drift_reference` loads); `--profile` uses one instead of
`--reference`. Files: .jsonl, .json (a list of objects), .csv, each optionally .gz (and .parquet).
Exit status 0 whatever the verdict (drift is a result, not an error); 2 for unusable input.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python scripts/drift.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly

Record = Mapping[str, Any]


def read_table(path: Path) -> list[Record]:
    """The records of a .jsonl / .json / .csv file (each may be gzipped), or .parquet."""
    name = path.name.lower()
    if not name.endswith((".csv", ".csv.gz")):
        from rlvr_jax.data.loaders import read_records

        return read_records(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    return list(csv.DictReader(io.StringIO(text)))


def texts(records: Sequence[Record], field: str, source: Path) -> list[str]:
    """The `field` of every record, which must be text."""
    out = []
    for i, record in enumerate(records):
        if field not in record:
            raise ValueError(f"{source}: record {i} has no field {field!r} (it has {sorted(record)})")
        value = record[field]
        if not isinstance(value, str):
            raise ValueError(f"{source}: field {field!r} of record {i} is {type(value).__name__}, not text")
        out.append(value)
    return out


def outcomes(records: Sequence[Record], field: str, source: Path) -> list[float | None]:
    """The `field` of every record as a number in [0, 1] (true / false count as 1 / 0); empty: unknown."""
    out: list[float | None] = []
    for i, record in enumerate(records):
        if field not in record:
            raise ValueError(f"{source}: record {i} has no field {field!r} (it has {sorted(record)})")
        value = record[field]
        if value is None or value == "":
            out.append(None)
            continue
        try:
            number = float({"true": 1, "false": 0}.get(str(value).lower(), value))
        except (TypeError, ValueError):
            number = float("nan")
        if not 0 <= number <= 1:
            raise ValueError(
                f"{source}: field {field!r} of record {i} is {value!r}; outcomes must be 0/1, true/false "
                "or a reward in [0, 1]"
            )
        out.append(number)
    return out


def load_side(
    path: str, field: str, output_field: str | None, outcome_field: str | None
) -> tuple[list[str], list[str] | None, list[float | None] | None]:
    """(prompts, responses or None, outcomes or None) of one file."""
    source = Path(path)
    records = read_table(source)
    if not records:
        raise ValueError(f"{source} holds no records")
    prompts = texts(records, field, source)
    responses = texts(records, output_field, source) if output_field else None
    known = outcomes(records, outcome_field, source) if outcome_field else None
    return prompts, responses, known


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(description=__doc__)
    ref = p.add_argument_group("reference (the training data, or a saved profile of it)")
    ref.add_argument("--reference", metavar="FILE", help="reference records")
    ref.add_argument("--reference_field", metavar="F", help="the prompt text field of --reference")
    ref.add_argument("--reference_output_field", metavar="F", help="its response (model output) field")
    ref.add_argument("--reference_outcome_field", metavar="F", help="its verified outcome field (0/1)")
    ref.add_argument("--profile", metavar="FILE", help="a profile saved by --save_profile, not --reference")
    ref.add_argument("--save_profile", metavar="FILE", help="write the reference's profile here")
    ref.add_argument("--top_k", type=int, default=200, help="tokens kept in the profile's vocabulary")
    ref.add_argument(
        "--embedding_dim", type=int, default=0,
        help="add hashed bag-of-words embedding statistics of this many dimensions (0: off)",
    )  # fmt: skip
    live = p.add_argument_group("live traffic")
    live.add_argument("--live", metavar="FILE", help="live records")
    live.add_argument("--live_field", metavar="F", help="the prompt text field of --live")
    live.add_argument("--live_output_field", metavar="F", help="its response field")
    live.add_argument("--live_outcome_field", metavar="F", help="its verified outcome field (0/1)")
    rule = p.add_argument_group("thresholds and the verdict (defaults: rlvr_jax/monitoring/drift.py)")
    rule.add_argument("--psi_threshold", type=float, default=0.25)
    rule.add_argument("--ks_threshold", type=float, default=0.2, help="on the KS statistic D")
    rule.add_argument("--js_threshold", type=float, default=0.25, help="on the Jensen-Shannon distance")
    rule.add_argument("--embedding_threshold", type=float, default=0.3)
    rule.add_argument("--pass_rate_threshold", type=float, default=0.1, help="absolute change")
    rule.add_argument("--alpha", type=float, default=0.05, help="the pass-rate change must be significant")
    rule.add_argument("--bins", type=int, default=10, help="quantile bins for PSI / JS")
    rule.add_argument("--min_samples", type=int, default=100, help="live texts needed for a verdict")
    rule.add_argument("--min_outcomes", type=int, default=30, help="live outcomes needed for a verdict")
    rule.add_argument("--rule", default="any", choices=["any", "majority", "all"], help="over features")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Which flags go together; a message that says what to pass."""
    if bool(args.reference) == bool(args.profile):
        raise ValueError("pass exactly one of --reference FILE (with --reference_field) or --profile FILE")
    if args.reference and not args.reference_field:
        raise ValueError("--reference needs --reference_field: the field that holds the prompt text")
    if args.profile and (args.save_profile or args.reference_output_field or args.reference_outcome_field):
        raise ValueError("--save_profile and --reference-*-field go with --reference, not --profile")
    if not args.live and not args.save_profile:
        raise ValueError(
            "pass --live FILE --live_field F to compare, or --save_profile FILE to build a profile"
        )
    if args.live and not args.live_field:
        raise ValueError("--live needs --live_field: the field that holds the prompt text")


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-drift` command."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        from rlvr_jax.monitoring.drift import (
            DriftConfig,
            HashedEmbedding,
            ReferenceProfile,
            build_profile,
            compare,
        )

        check_args(args)
        config = DriftConfig(
            psi_threshold=args.psi_threshold, ks_threshold=args.ks_threshold, js_threshold=args.js_threshold,
            embedding_threshold=args.embedding_threshold, pass_rate_threshold=args.pass_rate_threshold,
            alpha=args.alpha, bins=args.bins, min_samples=args.min_samples, min_outcomes=args.min_outcomes,
            rule=args.rule,
        )  # fmt: skip
        if args.profile:
            profile = ReferenceProfile.load(args.profile)
        else:
            prompts, responses, known = load_side(
                args.reference,
                args.reference_field,
                args.reference_output_field,
                args.reference_outcome_field,
            )
            embed = HashedEmbedding(args.embedding_dim) if args.embedding_dim else None
            profile = build_profile(prompts, responses, known, embed=embed, top_k=args.top_k)
            if args.save_profile:
                profile.save(args.save_profile)
                print(f"profile: {args.save_profile}", file=sys.stderr)
        if not args.live:
            return 0
        prompts, responses, known = load_side(
            args.live, args.live_field, args.live_output_field, args.live_outcome_field
        )
        report = compare(profile, prompts, responses, known, config=config)
        text = json.dumps(_strict(report), indent=2, allow_nan=False)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        print(text)
        return 0

    return fail_cleanly(run)


def _strict(value: Any) -> Any:
    """Strict JSON: a non-finite statistic (e.g. a shift from a reference with no spread) becomes null;
    its "exceeded" flag still says whether it crossed the threshold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
