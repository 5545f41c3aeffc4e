"""The whole GRPO step, as a user waits for it: where the time goes, measured by the real training loop.

    python benchmarks/grpo_step.py --shape qwen2.5-0.5b --prompts 32 --group 8 --new_tokens 256 \
        --tokenizer .stage/qwen2.5-tokenizer --data .stage/gsm8k --out benchmarks/results/grpo_step_h200.json
    python benchmarks/grpo_step.py --shape smollm2-135m --prompts 2 --group 2 --new_tokens 8 --steps 3  # CPU
    python benchmarks/grpo_step.py --task mbpp --async_rollouts ...  # one-step off-policy (rl.async_rollouts)

Random weights of a named shape (`benchmarks/rollout.py` SHAPES; speed does not depend on their values)
with the real tokenizer of the family (--tokenizer: an HF tokenizer directory or a GGUF file; default the
SmolLM2 GGUF in ../shared/models, which suits the llama shapes), written as an HF directory. Then
`rlvr_jax.trainer.train` runs --steps steps of `configs/gsm8k.py` (or --task's config) on --data, and each
component of the step is read back from the run's metrics.jsonl:

  sample      the sampler: prefill + decode on the device and the copy of its output to the host
  encode      chat template + tokenising the prompts          } host work around the sampler
  detokenize  decoding the completions                         }
  reward      the reward workers (a round trip to other processes)
  batch       advantages and the update's batch (host -> device)
  update      the jitted updates until the new state is ready (device)
  handover    the new parameters to the sampler
  overhead    (step - sample - update) / step: everything that is not the device sampling or updating
  compile     the warm-up before step 1 (`train.warmup_compile`): step 1's prompt bucket (sampler and
              update), the other reachable ones in the background (`train.warmup_background`; with 0
              all of them before step 1); compile_wait lists what each step waited for the background

With --async_rollouts (`rl.async_rollouts`) the next step's rollout is sampled and scored while the update
runs: sample / encode / detokenize / reward then overlap the update, and `rollout_wait` is what the step
still waited for its rows.

Medians over the steps after the first two (the first compiles the sampler and the update; the second
can still compile a new prompt bucket); the first steps' times are the compile cost. Random weights rarely
emit a stop token, so almost every completion runs to --new_tokens; the JSON records the mean length.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rollout import SHAPES, _device_name, _versions

PHASES = ("sample", "encode", "detokenize", "reward", "batch", "update", "handover")


def random_model_dir(shape: str, tokenizer_source: str, out: Path, dtype: str) -> Path:
    """An HF directory with random weights of `shape` and the tokenizer of `tokenizer_source`."""
    from rlvr_jax.models import ModelConfig, init_model
    from rlvr_jax.weights import export_hf, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    cfg = ModelConfig.from_hf_config(SHAPES[shape], dtype=dtype, param_dtype="float32")
    cfg = cfg.replace(eos_token_ids=tuple(tokenizer.stop_ids[:1]))
    export_hf(init_model(cfg, seed=0), out, tokenizer, dtype=dtype)
    return out


def run_config(args: argparse.Namespace, model_dir: Path):
    """The task's config at the benchmark's shape: no periodic evaluation, checkpoints or export."""
    import importlib

    c = importlib.import_module(f"configs.{args.task}").get_config()
    c.model.path = str(model_dir)
    c.data.path = args.data
    c.data.eval_limit = args.prompts  # the before / after evaluations are not timed; keep them short
    c.rl.prompts_per_step, c.rl.group_size = args.prompts, args.group
    c.sampling.max_new_tokens = args.new_tokens
    c.rl.beta, c.rl.mu = 0.0, 1
    c.rl.async_rollouts = args.async_rollouts
    if args.warmup_threads is not None:
        c.train.warmup_threads = args.warmup_threads
    if args.warmup_background is not None:
        c.train.warmup_background = bool(args.warmup_background)
    if args.micro_batches is not None:  # else the task config's (measured) choice
        c.optim.micro_batches = args.micro_batches
    if args.remat is not None:
        c.model.remat = args.remat
    if args.param_dtype is not None:  # master weights (and what the sampler is handed)
        c.model.param_dtype = args.param_dtype
    c.train.steps, c.train.eval_every = args.steps, 0
    c.train.checkpoint_every, c.train.export_hf = args.steps + 1, False
    c.logging.tensorboard = False
    return c


def summarise(rows: list[dict], skip: int) -> dict:
    """Median seconds per component over the steady steps, and the first steps' (compile) times."""
    steady = rows[skip:] or rows[-1:]
    med = lambda key: statistics.median(r[key] for r in steady)
    step = med("time/step_s")
    out = {
        "step_s": round(step, 4),
        "components_s": {p: round(med(f"time/{p}_s"), 4) for p in PHASES},
        "overhead_fraction": round(med("time/overhead_fraction"), 4),
        "first_steps_s": [round(r["time/step_s"], 3) for r in rows[:skip]],
        "response_length_mean": round(med("response/length_mean"), 1),
        "rollout_tokens_per_s": round(med("throughput/rollout_tokens_per_s"), 1),
        "train_tokens_per_s": round(med("throughput/train_tokens_per_s"), 1),
    }
    if all("time/rollout_wait_s" in r for r in steady):  # rl.async_rollouts
        out["components_s"]["rollout_wait"] = round(med("time/rollout_wait_s"), 4)
    if "time/compile_s" in rows[0]:
        out["compile_s"] = round(rows[0]["time/compile_s"], 2)
    if "time/compile_wait_s" in rows[0]:  # train.warmup_background: the steps' waits for its compiles
        out["compile_wait_s"] = [round(r["time/compile_wait_s"], 3) for r in rows]
    if all("throughput/mfu" in r for r in steady):
        out["update_mfu"] = round(med("throughput/mfu"), 4)
    out["host_s"] = round(sum(out["components_s"][p] for p in ("encode", "detokenize", "reward", "batch")), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--task", default="gsm8k", help="a configs/ file name (its task, prompt and reward)")
    p.add_argument("--data", default=None, help="the task's local data (default: ../shared/data/<task>)")
    p.add_argument("--tokenizer", default=None, help="HF tokenizer directory or GGUF file")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", default=None, choices=("none", "full", "dots"), help="default: the config's")
    p.add_argument("--micro_batches", type=int, default=None, help="default: the config's; 0 = probe")
    p.add_argument("--param_dtype", default=None, choices=("float32", "bfloat16"), help="default: config's")
    p.add_argument(
        "--sampler_params", default="compute", choices=("compute", "master"),
        help="what the sampler is handed: the trainer's bf16 copy (compute) or the float32 masters as "
        "stored (master: the trainer before 2026-12-05), for a before / after in one call",
    )  # fmt: skip
    p.add_argument(
        "--warmup_background", type=int, choices=(0, 1), default=None,
        help="train.warmup_background: 1 compiles step 1's bucket before it and the rest in the background, "
        "0 all before step 1 (default: the config's, 1)",
    )  # fmt: skip
    p.add_argument(
        "--async_rollouts", action="store_true",
        help="rl.async_rollouts: sample and score step n + 1 while step n updates (one step off-policy)",
    )  # fmt: skip
    p.add_argument(
        "--warmup_threads", type=int, default=None,
        help="train.warmup_threads: compiles at once in the warm-up (default: the config's, 1)",
    )  # fmt: skip
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the medians (compiles)")
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args()
    if args.steps <= args.skip:
        p.error(f"--steps must exceed --skip ({args.skip}): the medians need steady steps")

    from rlvr_jax.config import shared_dir
    from rlvr_jax.monitoring.metrics import read_metrics
    from rlvr_jax.trainer import train

    if args.sampler_params == "master":
        import rlvr_jax.trainer.setup as trainer_setup

        trainer_setup.sampler_params = lambda params, cfg: params
    args.data = args.data or str(shared_dir() / "data" / args.task)
    args.tokenizer = args.tokenizer or str(shared_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model_dir(args.shape, args.tokenizer, Path(tmp) / "model", args.dtype)
        t0 = time.perf_counter()
        config = run_config(args, model_dir)
        summary = train(config, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        rows = [r for r in read_metrics(summary.metrics_file) if "time/step_s" in r]
    result = {
        "benchmark": "grpo_step",
        "shape": args.shape,
        "prompts": args.prompts,
        "group": args.group,
        "new_tokens": args.new_tokens,
        "task": args.task,
        "steps": args.steps,
        "remat": config.model.remat,
        "param_dtype": config.model.param_dtype,
        "sampler_params": args.sampler_params,
        "async_rollouts": args.async_rollouts,
        "warmup_threads": int(config.train.warmup_threads),
        "warmup_background": bool(config.train.warmup_background),
        "micro_batches": int(rows[-1]["optim/micro_batches"]),
        **summarise(rows, args.skip),
        "run_wall_s": round(wall, 1),
        "device": _device_name(),
        "versions": _versions(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
