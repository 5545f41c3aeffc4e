"""Evaluate a model on a task's held-out split: accuracy with a 95% interval, pass@k, samples for review.

    python scripts/evaluate.py --config=configs/gsm8k.py \\
        --config.model.path=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --config.data.path=../shared/data/gsm8k --split=test --limit=32 --out=runs/eval/smollm2
    python scripts/evaluate.py --checkpoint=runs/gsm8k --out=runs/eval/trained
    python scripts/evaluate.py --config=configs/humaneval.py --num_samples=10 --out=runs/eval/he

Writes OUT/samples.jsonl (prompt id, completion, reward, reason for every sample) and OUT/metrics.json
(accuracy with its interval and method, mean reward, pass@k with several samples, EM / F1 for QA, by
level where the data has levels, response lengths, the truncated share, accuracy among finished answers,
timing). The budget is sampling.eval_max_new_tokens (default: sampling.max_new_tokens); at a generous
one, the printed "95% of answers finish within N tokens" (metrics.json's tokens_for_95_finished) is the
budget to give a benchmark's evaluation, e.g. --config.sampling.eval_max_new_tokens=1024.
`scripts/compare.py OUT_A OUT_B` tests the difference between two such runs.

Held out means held out (`rlvr_jax/data/heldout.py`): items of the split that repeat, or whose question
the training prompts ask, are removed first, said in one line and counted in metrics.json's `held_out`.
The training prompts are --train_config's training split: default the --checkpoint run's saved config,
else --config. HumanEval after MBPP training, with and without the items MBPP nearly copies:
    python scripts/evaluate.py --config=configs/humaneval.py --split=test --checkpoint=runs/mbpp \\
        --exclude=benchmarks/results/mbpp_humaneval_near_duplicates.json
and the base model on the same items: --train_config=configs/mbpp.py in place of --checkpoint.

--checkpoint takes a training workdir (its latest checkpoint, or
--checkpoint_step=N|best); without --config, the config that run saved (WORKDIR/config.json) is used.
--config takes a file or a packaged config's name; --print_config lists every key and exits.
About 5 minutes on a 2-core CPU for the first command (32 items, SmolLM2-135M, up to 384 tokens).
"""

from __future__ import annotations

import datetime
import math
import sys
from pathlib import Path

if not __package__:  # run as a file (python scripts/evaluate.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags
from ml_collections import config_flags

from rlvr_jax.cli import (
    check_config_flags,
    fail_cleanly,
    parse_flags,
    print_config,
    resolve_config_names,
    usage_error,
    with_run_config,
)
from rlvr_jax.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config: a file or a packaged config's name, [:preset]; default with "
    "--checkpoint: the config that run saved", lock_config=True,
)  # fmt: skip
_TRAIN_CONFIG = config_flags.DEFINE_config_file(
    "train_config", None, "the config whose training prompts are not held out (a file or a packaged "
    "config's name, [:preset]); default: the --checkpoint run's saved config, else --config",
    lock_config=True,
)  # fmt: skip
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "training workdir (or its checkpoints/) to load weights from"
)
_STEP = flags.DEFINE_string("checkpoint_step", "latest", "with --checkpoint: a step number, latest or best")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (default: the config's data.eval_split)")
_LIMIT = flags.DEFINE_integer("limit", None, "evaluate the first N items only", lower_bound=1)
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 1, "completions per item (pass@k for k up to this)", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature",
    None,
    "sampling temperature (default: greedy for 1 sample, the config's for several)",
    lower_bound=0.0,
)
_BATCH = flags.DEFINE_integer("batch_size", 64, "completions generated per batch", lower_bound=1)
_EXCLUDE = flags.DEFINE_string(
    "exclude", None, "JSON file of item ids to also report the metrics without (e.g. "
    "benchmarks/results/mbpp_humaneval_near_duplicates.json: HumanEval items MBPP nearly copies)",
)  # fmt: skip
_OUT = flags.DEFINE_string("out", None, "output folder (default: runs/eval/<task>-<split>-<time>)")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "print every config key with its value and meaning, then exit"
)
flags.register_validator(
    "checkpoint_step",
    lambda step: step.isdigit() or step in ("latest", "best"),
    "must be a step number, latest or best",
)
flags.register_validator(
    "temperature", lambda t: t is None or math.isfinite(t), "must be a finite number (0: greedy)"
)
flags.register_validator(
    "checkpoint",
    lambda folder: folder is None or Path(folder).expanduser().is_dir(),
    "no such folder: pass a training workdir (or its checkpoints/ folder)",
)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        argv = with_run_config(argv)  # --checkpoint=WORKDIR without --config: the run's saved config
        argv = resolve_config_names(argv, "train_config")  # --train_config=mbpp: the packaged config
        check_config_flags(argv, "train_config")  # a missing file or a wrong override: one clear line
    except ConfigError as e:
        usage_error(str(e))
    rest = parse_flags(argv)
    if _CONFIG.value is None:
        usage_error("flag --config is required (a config file or name), or --checkpoint=WORKDIR of a run")
    return rest


def _main(argv: list[str]) -> None:
    del argv  # parse_flags refuses stray arguments
    if _PRINT_CONFIG.value:
        print_config()
        return

    def run() -> int:
        from rlvr_jax.config import check_split, validate
        from rlvr_jax.evaluation.evaluate import describe, evaluate

        config = _CONFIG.value
        validate(config)  # before any model or data loads
        if _SPLIT.value is not None:
            check_split(config, _SPLIT.value, "--split")
        step = _STEP.value
        out = _OUT.value or (
            f"runs/eval/{config.data.task}-{_SPLIT.value or config.data.eval_split}-"
            f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
        )
        result = evaluate(
            config,
            out,
            split=_SPLIT.value,
            limit=_LIMIT.value,
            num_samples=_NUM_SAMPLES.value,
            temperature=_TEMPERATURE.value,
            checkpoint=_CHECKPOINT.value,
            checkpoint_step=int(step) if step.isdigit() else step,
            batch_size=_BATCH.value,
            train_config=_TRAIN_CONFIG.value,
            exclude=_EXCLUDE.value,
        )
        print(describe(result.metrics))
        print(f"wrote {result.out / 'metrics.json'} and {result.out / 'samples.jsonl'}")
        return 0

    code = fail_cleanly(run)
    if code:
        sys.exit(code)


def main() -> None:
    """The `rlvr-evaluate` command."""
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
