"""Score pre-generated completions for any registered task and print the pass rate / mean reward.

    python scripts/score.py --task humaneval --samples samples.jsonl [--data ../shared/data] [--out r.jsonl]

Samples are jsonl, one completion per line, joined to the task's data by id: the human-eval format
(`task_id`, `completion`; for HumanEval the completion continues the prompt, for MBPP it is the whole
program) or `id` + `completion` for any task. Several completions per id are fine (pass@1 over all of
them). `--data` is the local data file or folder (default: the task's Hugging Face hub source); `--split`
picks the split the ids come from (default test). `--out` writes one row per sample, in input order: the
input row plus `passed` (reward >= 1), `reward` and `reason`. It is written under a temporary name and
renamed once complete, so a run that fails leaves no file that looks like a finished one.

Code tasks are scored as evaluation scores them: `reward` is the verdict on the solution extracted from
the completion (without the model's own tests and demo code, rlvr_jax/rewards/code_extract.py), and rows
and summary also give the strict verdict on the whole code block (`passed_strict`, `reward_strict`,
`reason_strict`).

Errors that are the input's fault (unknown task or ids, unreadable files, missing fields, text that is not
valid Unicode, a data file of the wrong schema, a --timeout that is not a positive number of seconds) stop
with a one-line message naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python scripts/score.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser
from rlvr_jax.data import get_task, registered_tasks
from rlvr_jax.data.loaders import DataError
from rlvr_jax.evaluation.metrics import EVAL_REWARD_OPTIONS, VARIANTS
from rlvr_jax.rewards import RewardResult, get_reward
from rlvr_jax.rewards.sandbox import score_async

PROGRESS_MIN_SAMPLES = 64  # below this a progress bar is noise
CHUNK = 64  # samples per reward call: small enough for a live progress bar, big enough to fill the pool
MAX_TIMEOUT_S = 24 * 3600.0


class InputError(Exception):
    """A problem with what the user passed; reported as one line, without a traceback."""


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl / .jsonl.gz file; each must be an object with an id and a `completion`."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read samples file {path}: {e}") from e
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {number}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise InputError(f"{path}, line {number}: expected a JSON object, found {type(row).__name__}")
        if "task_id" not in row and "id" not in row:
            raise InputError(f"{path}, line {number}: no 'task_id' (or 'id') field; it has {sorted(row)}")
        if "completion" not in row:
            raise InputError(f"{path}, line {number}: no 'completion' field; it has {sorted(row)}")
        if not isinstance(row["completion"], str):
            kind = type(row["completion"]).__name__
            raise InputError(f"{path}, line {number}: 'completion' must be a string, found {kind}")
        problem = unencodable(row)
        if problem:
            raise InputError(f"{path}, line {number}: {problem}")
        rows.append(row)
    if not rows:
        raise InputError(f"{path} holds no samples")
    return rows


def unencodable(value: Any, where: str = "the row") -> str | None:
    """Where a JSON value holds text UTF-8 cannot encode (a lone surrogate from a "\ud800" escape), which
    neither the sandbox nor the results file could take; None when it is all well-formed."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            char = ascii(value[e.start])[1:-1]
            return f"{where} is not valid Unicode text (unpaired surrogate {char} at character {e.start})"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = repr(key) if where == "the row" else f"{where}[{key!r}]"
            problem = unencodable(key, f"a field name in {where}") or unencodable(item, inner)
            if problem:
                return problem
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = unencodable(item, f"{where}[{i}]")
            if problem:
                return problem
    return None


def sample_id(row: Mapping[str, Any]) -> str:
    """The join key: human-eval's `task_id`, else `id`, as text (MBPP task ids are ints in some files)."""
    return str(row["task_id"] if "task_id" in row else row["id"])


def join(
    rows: Sequence[Mapping[str, Any]], data: Sequence[Mapping[str, Any]], where: str
) -> list[Mapping[str, Any]]:
    """The task sample for each row, in row order; unknown ids are an error that lists some of them."""
    by_id = {str(sample["id"]): sample for sample in data}
    unknown = sorted({sample_id(r) for r in rows} - by_id.keys())
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        example = next(iter(by_id), "(none)")
        raise InputError(
            f"{len(unknown)} sample id(s) not in {where}: {shown} (its ids look like {example!r})"
        )
    return [by_id[sample_id(r)] for r in rows]


def score(
    reward_name: str, completions: list[Any], samples: list[Mapping[str, Any]], options: dict
) -> RewardResult:
    """Scores in chunks submitted together (the sandbox pool stays full); a rich progress bar when big."""
    reward = get_reward(reward_name)
    chunks = [slice(i, i + CHUNK) for i in range(0, len(samples), CHUNK)]
    futures = [score_async(reward, completions[c], samples[c], **options) for c in chunks]
    if len(samples) >= PROGRESS_MIN_SAMPLES:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            bar = progress.add_task("scoring", total=len(samples))
            for chunk, future in zip(chunks, futures, strict=True):
                future.result()
                progress.advance(bar, len(samples[chunk]))
    results = [f.result() for f in futures]
    return concatenated(results)


def concatenated(results: Sequence[RewardResult]) -> RewardResult:
    """The chunks' results as one, with the variants every chunk has (the code rewards' strict verdicts)."""
    scores = [s for r in results for s in r.scores.tolist()]
    reasons = [why for r in results for why in r.reasons]
    names = [n for n in VARIANTS if results and all(n in r.variants for r in results)]
    variants = {n: concatenated([r.variants[n] for r in results]) for n in names}
    return RewardResult(scores, reasons, variants)


def summary(task: str, rows: Sequence[Mapping[str, Any]], result: RewardResult) -> str:
    n = len(rows)
    passed = int((result.scores >= 1.0).sum())
    problems = len({sample_id(r) for r in rows})
    line = (
        f"{task}: {n} samples over {problems} problems; passed {passed}/{n} = {passed / n:.2%}; "
        f"mean reward {float(result.scores.mean()):.4f}"
    )
    for name, variant in result.variants.items():
        also = int((variant.scores >= 1.0).sum())
        line += f"; {name}: passed {also}/{n} = {also / n:.2%}"
    return line


def write_results(path: Path, rows: Sequence[Mapping[str, Any]], result: RewardResult) -> None:
    """One jsonl row per sample, written to a temporary file next to `path` and renamed over it only
    once every row is written: a failure on any row leaves no partial file (and an older `path` intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for i, (row, value, why) in enumerate(
                zip(rows, result.scores.tolist(), result.reasons, strict=True)
            ):
                out = {**row, "passed": value >= 1.0, "reward": value, "reason": why}
                for name, variant in result.variants.items():
                    also = float(variant.scores[i])
                    out |= {f"passed_{name}": also >= 1.0, f"reward_{name}": also}
                    out[f"reason_{name}"] = variant.reasons[i]
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_timeout(seconds: float | None) -> None:
    """--timeout must be a finite number of seconds > 0 (at most a day): -5 would fail every program."""
    if seconds is not None and not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise InputError(
            f"--timeout must be a number of seconds > 0 and at most {MAX_TIMEOUT_S:g}, got {seconds}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = FlagParser(description=__doc__)
    parser.add_argument("--task", required=True, help=f"registered task: {', '.join(registered_tasks())}")
    parser.add_argument("--samples", required=True, type=Path, help="jsonl of {task_id|id, completion}")
    parser.add_argument("--data", default=None, help="local data file or folder (default: the hub)")
    parser.add_argument("--split", default="test", help="split the sample ids come from (default test)")
    parser.add_argument("--out", type=Path, default=None, help="write per-sample results (jsonl) here")
    parser.add_argument("--timeout", type=float, default=None, help="per-program seconds (code tasks)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The `rlvr-score` command."""
    args = parse_args(argv)
    try:
        check_timeout(args.timeout)
        try:
            task = get_task(args.task)
        except KeyError as e:
            raise InputError(e.args[0]) from e
        rows = read_samples(args.samples)
        try:
            data = task.load(args.split, args.data)
        except (DataError, OSError, ValueError) as e:
            raise InputError(
                f"cannot load task {args.task!r} ({args.split}) from {args.data or 'the hub'}: {e}"
            ) from e
        samples = join(rows, data, f"{args.task} {args.split} ({args.data or 'hub'})")
        options = dict(EVAL_REWARD_OPTIONS.get(task.reward, {}))
        options |= {"timeout_s": args.timeout} if args.timeout is not None else {}
        result = score(task.reward, [r["completion"] for r in rows], samples, options)
        if args.out:
            try:
                write_results(args.out, rows, result)
            except (OSError, UnicodeError) as e:
                raise InputError(f"cannot write results to {args.out}: {e}") from e
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(args.task, rows, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
