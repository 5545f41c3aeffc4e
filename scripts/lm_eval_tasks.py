"""Write lm-evaluation-harness tasks (GSM8K generation, SST-2 multiple choice) that run offline against
the server, and print the `lm_eval` command.

    python scripts/lm_eval_tasks.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data ../shared/data --limit 50 --max_gen_toks 256 --out runs/lm_eval
    python scripts/serve.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000 &
    # then the command this script prints (lm_eval --model local-completions ... --include_path ...)

OUT/tasks holds the tasks (local JSON-lines data, YAMLs, the module they call; see
rlvr_jax/evaluation/lm_eval_tasks.py for what each task scores and how), OUT/tokenizer the model's
tokenizer as a Hugging Face folder, which lm-eval's local-completions model needs to count context
tokens. --model takes any source scripts/serve.py takes (a training workdir gives its base model's
tokenizer). The prompts are `scripts/evaluate.py`'s with data.chat=False, so GSM8K per-item results can
be compared with `scripts/evaluate.py --config=configs/gsm8k.py --config.data.chat=False ...`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if not __package__:  # run as a file (python scripts/lm_eval_tasks.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly

TASKS = ("gsm8k", "sst2")


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(description=__doc__)
    p.add_argument("--model", required=True, help="the served model's source (for its tokenizer)")
    p.add_argument("--data", required=True, help="folder with gsm8k/ and sst2/ (e.g. ../shared/data)")
    p.add_argument("--out", required=True, help="output folder (tasks/, tokenizer/)")
    p.add_argument("--limit", type=int, default=50, help="items per task (the first of the test split)")
    p.add_argument("--max_gen_toks", type=int, default=256, help="new tokens per GSM8K completion")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server, for the printed command")
    p.add_argument("--served_model_name", default=None, help="the server's model name (default as serve.py)")
    return p


def lm_eval_command(
    *, model_name: str, url: str, tokenizer: Path, tasks_dir: Path, tasks: list[str], output: Path
) -> str:
    """The shell command that runs the tasks against the server (offline: no hub, no dataset downloads)."""
    model_args = ",".join([
        f"model={model_name}", f"base_url={url.rstrip('/')}/v1/completions", "tokenizer_backend=huggingface",
        f"tokenizer={tokenizer}", "tokenized_requests=True",
    ])  # fmt: skip
    args = [
        "lm_eval", "--model", "local-completions", "--model_args", model_args, "--include_path",
        str(tasks_dir), "--tasks", ",".join(tasks), "--log_samples", "--output_path", str(output),
    ]  # fmt: skip
    return "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 " + shlex.join(args)


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-lm-eval-tasks` command."""
    return fail_cleanly(lambda: write(argv))


def write(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(f"--tasks takes a comma-separated subset of {','.join(TASKS)}, got {args.tasks!r}")
    from rlvr_jax.evaluation.lm_eval_tasks import save_tokenizer, write_tasks
    from rlvr_jax.scripts.serve import default_model_name

    out = Path(args.out).expanduser().resolve()
    names = write_tasks(
        out / "tasks", args.data, limit=args.limit, max_gen_toks=args.max_gen_toks, tasks=tasks
    )
    tokenizer = save_tokenizer(args.model, out / "tokenizer")
    name = args.served_model_name or default_model_name(args.model)
    print(f"wrote {out / 'tasks'} ({', '.join(names)}) and {tokenizer}")
    command = lm_eval_command(
        model_name=name, url=args.url, tokenizer=tokenizer, tasks_dir=out / "tasks", tasks=names,
        output=out / "results",
    )  # fmt: skip
    print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
