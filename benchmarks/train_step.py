"""Train-step speed: policy log-probs + GRPO loss + backward + AdamW update, at real model shapes.

    python benchmarks/train_step.py --shape qwen2.5-0.5b --seq 512 1024 --tokens 32768 \
        --out benchmarks/results/train_step_h100.json
    python benchmarks/train_step.py --shape qwen2.5-1.5b qwen2.5-7b --seq 512 --tokens 16384 --remat full \
        --lora_rank 0 16 --repeats 3 --out benchmarks/results/lora_train_step_h100.json   # LoRA vs full
    python benchmarks/train_step.py --shape smollm2-135m --seq 64 --tokens 256 --repeats 1 \
        --lora_rank 0 4   # CPU smoke

Random weights (speed does not depend on their values), bf16 compute with fp32 master weights and Adam
state, as the trainer runs. For each shape x sequence length x remat policy x LoRA rank: the step time
(median of --repeats after a compiling call), tokens/s, model TFLOP/s and MFU (model FLOPs as the trainer
counts them: 6 per parameter per token plus attention, 4 per frozen base parameter with LoRA, remat
recomputation not counted) and device memory (per configuration from the compiled program, and the
device's peak, which is the configuration's own since each runs in a process of its own).
Rows per step = --tokens / seq, so every sequence length trains on the same number of tokens.

--lora_rank R (a list; 0 = full fine-tuning, the default) measures the step as the trainer runs it with
model.lora.rank=R: adapters on every projection (`lora.with_adapters`, alpha --lora_alpha) around a
frozen base the train state keeps in bf16, and only the adapters differentiated and in the optimizer
(`init_train_state`). Each result records the rank, the trainable parameter count, the parameter and
optimizer-state bytes (from the state's shapes, so also for a configuration that does not fit).

Each configuration runs in a fresh process (`--one`, internal), so its device memory is released when it
ends and one that does not fit cannot end the sweep: out of memory while allocating the state ("stage":
"init"), or in the step ("step"), or a child the allocator kills ("process died") is a result
({"error": "out of memory", ...}), and the sweep goes on. A 7B full fine-tune (float32 masters and Adam
moments: 16 bytes per parameter, 122 GB) is such a configuration on an 80 GB card. --in_process runs
them all in this process instead (quicker on a CPU; a configuration that fails can leave memory behind).

--profile DIR traces one more step of each configuration with jax.profiler and adds where the device time
went: matmul kernels (cuBLAS / nvjet / cutlass), attention, XLA fusions (elementwise, softmax, the
log-softmax over the vocabulary, the optimizer update) and the rest, with the largest kernels. That is the
answer to "why is MFU below the matmul roofline": only the matmul share runs near peak.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rollout import SHAPES, _device_name, _versions

_MATMUL = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_", "dot")
_ATTENTION = ("flash", "fmha", "cudnn", "attention", "sdpa")


def kernel_breakdown(trace_dir: str, top: int = 15) -> dict:
    """Device time of one traced step by kind of kernel, from a jax.profiler trace directory."""
    from benchmarks.profile_decode import device_kernel_times

    rows = device_kernel_times(trace_dir)
    total = sum(t for _, t, _ in rows) or 1.0
    kinds: dict[str, float] = {"matmul": 0.0, "attention": 0.0, "fusion": 0.0, "other": 0.0}
    for name, t, _ in rows:
        low = name.lower()
        kind = (
            "attention"
            if any(k in low for k in _ATTENTION)
            else "matmul"
            if any(k in low for k in _MATMUL)
            else "fusion"
            if "fusion" in low or low.startswith(("loop_", "input_", "wrapped_"))
            else "other"
        )
        kinds[kind] += t
    return {
        "device_ms": round(total / 1e3, 2),
        "share": {k: round(v / total, 4) for k, v in kinds.items()},
        "top_kernels": [
            {"name": n[:120], "ms": round(t / 1e3, 2), "share": round(t / total, 4), "launches": c}
            for n, t, c in rows[:top]
        ],
    }


def _memory_gb(compiled: Any) -> dict[str, float] | None:
    """`compiled_memory`'s reading of an already compiled executable."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # a backend without the analysis
        return None
    if analysis is None:
        return None
    gb = lambda n: round(n / 1e9, 6)
    arguments, outputs = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
    temporaries, aliased = analysis.temp_size_in_bytes, analysis.alias_size_in_bytes
    return {
        "arguments_gb": gb(arguments),
        "outputs_gb": gb(outputs),
        "temporaries_gb": gb(temporaries),
        "aliased_gb": gb(aliased),
        "peak_gb": gb(arguments + outputs - aliased + temporaries),
    }


def compiled_memory(step: Any, *args: Any) -> dict[str, float] | None:
    """What XLA plans for one call of the jitted `step` on `args`, in GB: its arguments, outputs,
    temporaries, the bytes it aliases (donated state written in place), and the peak that implies
    (arguments + outputs - aliased + temporaries). Per configuration, from the compiled program.

    The runtime counter `peak_bytes_in_use` is the process's high-water mark since it started: in a sweep
    it keeps the largest configuration's peak for every later one (the 2026-12-04 H200 run reported
    83.34 GB for every configuration). None where the backend gives no analysis."""
    try:
        compiled = step.lower(*args).compile()
    except Exception:  # a step that is not a plain jax.jit
        return None
    return _memory_gb(compiled)


def is_out_of_memory(error: BaseException | str) -> bool:
    """Whether an exception (or a dead child's stderr) is the device running out of memory."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def state_sizes(cfg: Any, optimizer: Any) -> dict[str, Any]:
    """Parameter and optimizer-state sizes of `init_train_state`'s state for `cfg`, from its shapes alone
    (nothing allocated, so a configuration that runs out of memory still reports them): float32 masters of
    what trains, with LoRA the frozen base in the compute dtype and Adam's moments for the adapters alone."""
    import jax
    import numpy as np

    from rlvr_jax.optim.memory import abstract_train_state
    from rlvr_jax.optim.state import partition_trainable

    state = abstract_train_state(cfg, optimizer, "float32")
    size = lambda x: int(np.prod(x.shape, dtype=np.int64))
    nbytes = lambda tree: sum(size(x) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    trainable = partition_trainable(state.params)[0]
    return {
        "trainable_params": sum(size(x) for x in jax.tree.leaves(trainable)),
        "param_bytes": nbytes(state.params),
        "trainable_param_bytes": nbytes(trainable),
        "optimizer_state_bytes": nbytes(state.opt_state),
    }


def run_one(spec: dict[str, Any]) -> dict:
    """One configuration: the train state, one compile, a first call and `repeats` timed steps.

    spec: shape (its name), hf_config (the shape's config.json fields), seq, rows, remat, repeats,
    prompt_len, lora_rank (0: full fine-tuning), lora_alpha, profile (a folder or None). An out-of-memory
    error is a result ({"error": "out of memory", "stage": "init" | "step"}), not the sweep's end."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rlvr_jax.models import ModelConfig, init_model
    from rlvr_jax.models.lora import with_adapters
    from rlvr_jax.monitoring.metrics import model_flops, peak_flops
    from rlvr_jax.optim import OptimConfig, init_train_state, make_optimizer
    from rlvr_jax.optim.memory import random_train_batch
    from rlvr_jax.rl import LossConfig
    from rlvr_jax.rl.update import make_train_step

    shape, seq, rows, remat = spec["shape"], spec["seq"], spec["rows"], spec["remat"]
    rank, alpha, prompt_len = spec.get("lora_rank", 0), spec.get("lora_alpha", 16.0), spec["prompt_len"]
    cfg = ModelConfig.from_hf_config(spec["hf_config"], dtype="bfloat16", param_dtype="float32", remat=remat)
    if rank:
        cfg = cfg.replace(lora_rank=rank, lora_alpha=alpha)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, total_steps=1000))
    result = {"shape": shape, "seq": seq, "rows": rows, "tokens_per_step": rows * seq, "remat": remat}
    result |= {"lora_rank": rank, "lora_alpha": alpha if rank else None}
    result |= {"params_m": round(cfg.num_params() / 1e6, 1)} | state_sizes(cfg, optimizer)
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")  # the allocator's; none on CPU
    result["device_memory_limit_gb"] = round(limit / 1e9, 2) if limit else None
    completion = seq - prompt_len
    stage = "init"
    try:
        t0 = time.perf_counter()
        if rank:  # as the trainer: adapters around the base, which the train state keeps in bf16, frozen
            # (initialised in bf16 straight away: a 7B base is not first held in float32)
            base = init_model(cfg.without_lora().replace(param_dtype=cfg.dtype), seed=0)
            model = with_adapters(base, rank, alpha)
            del base
        else:
            model = init_model(cfg, seed=0)
        state = init_train_state(model, optimizer, master_dtype="float32", cfg=cfg)
        step = make_train_step(
            nnx.graphdef(model), optimizer, LossConfig(clip_high=0.28, max_len=completion), temperature=1.0
        )
        del model
        batch = jax.tree.map(jnp.asarray, random_train_batch(rows, prompt_len, completion, cfg.vocab_size))
        jax.block_until_ready((state, batch))
        result["init_s"] = round(time.perf_counter() - t0, 2)
        stage = "step"
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()  # once: the timed calls and the memory reading
        result["compile_s"] = round(time.perf_counter() - t0, 2)
        result["compiled_memory"] = _memory_gb(compiled)
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        result["first_call_s"] = round(time.perf_counter() - t0, 2)
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    except Exception as e:  # an OOM is a result of the sweep, not its end
        if not is_out_of_memory(e):
            raise
        return result | {"error": "out of memory", "stage": stage, "message": str(e)[:400]}
    if spec.get("profile"):
        suffix = f"_lora{rank}" if rank else ""
        trace_dir = Path(spec["profile"]) / f"{shape}_s{seq}_{remat}{suffix}"
        with jax.profiler.trace(str(trace_dir)):
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
        try:
            result["profile"] = kernel_breakdown(str(trace_dir))
        except FileNotFoundError as e:  # no device plane (CPU) or the profiler wrote nothing
            result["profile"] = {"error": str(e)}
    seconds = statistics.median(times)
    flops = model_flops(cfg, (rows, seq))
    peak = peak_flops()
    peak_bytes = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")  # no stats on CPU
    result |= {
        "step_s": round(seconds, 4),
        "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(rows * seq / seconds, 1),
        "model_tflops_per_s": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        # The process's high-water mark: this configuration's own when it ran in a process of its own.
        "process_peak_memory_gb": round(peak_bytes / 1e9, 2) if peak_bytes else None,
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }
    return result


def run_isolated(spec: dict[str, Any], timeout: float) -> dict:
    """`run_one(spec)` in a fresh process, which gives all its device memory back when it exits: a
    configuration that does not fit (a 7B full fine-tune on an 80 GB card) cannot take the next one down
    with it, and the device's peak counter is that configuration's own. The child prints its result as the
    last line; a child that dies (the allocator aborting, the kernel's OOM killer) or times out is recorded
    as a result too."""
    import subprocess

    label = {k: spec[k] for k in ("shape", "seq", "rows", "remat", "lora_rank")}
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return label | {"error": f"timed out after {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1]) | {"process_s": round(time.perf_counter() - t0, 1)}
    error = "out of memory" if is_out_of_memory(proc.stderr) else f"exit {proc.returncode}"
    return label | {"error": error, "stage": "process died", "message": proc.stderr[-1500:]}


def _write(record: dict, out: str | None) -> None:
    """Rewrites the record after every result: a sweep cut short by a time limit keeps what it measured."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-1.5b"], choices=sorted(SHAPES))
    p.add_argument("--seq", nargs="+", type=int, default=[512, 1024], help="prompt + completion tokens")
    p.add_argument("--prompt_len", type=int, help="prompt tokens per row (default 128, at most seq / 2)")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step (rows = tokens / seq)")
    p.add_argument("--remat", nargs="+", default=["full", "none"], choices=["none", "full", "dots"])
    p.add_argument(
        "--lora_rank", nargs="+", type=int, default=[0],
        help="LoRA adapter ranks to measure, 0 = full fine-tuning (e.g. 0 16 compares the two)",
    )  # fmt: skip
    p.add_argument("--lora_alpha", type=float, default=16.0, help="the adapters' alpha (scale alpha / rank)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--profile", help="trace one step per configuration into this folder and summarise it")
    p.add_argument(
        "--in_process", action="store_true",
        help="run every configuration in this process (default: each in a fresh process of its own)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration in its process")
    p.add_argument(
        "--budget_s", type=float, default=None,
        help="seconds for the whole sweep (a device call's limit): a configuration gets at most what is "
        "left, and one that would start with nothing left is recorded as skipped",
    )  # fmt: skip
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child of run_isolated: a configuration as JSON
    args = p.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    prompt_len = lambda seq: args.prompt_len or min(128, seq // 2)
    if any(prompt_len(seq) >= seq for seq in args.seq):
        p.error(f"--prompt_len {args.prompt_len} leaves no completion tokens in --seq {min(args.seq)}")
    record = {
        "benchmark": "train step (log-probs + GRPO loss + backward + AdamW), random weights",
        "device": None,
        "date": datetime.date.today().isoformat(),
        "versions": None,
        "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": [],
    }
    t_start = time.perf_counter()
    for shape, seq, remat, rank in itertools.product(args.shape, args.seq, args.remat, args.lora_rank):
        spec = {
            "shape": shape, "hf_config": SHAPES[shape], "seq": seq, "remat": remat,
            "rows": max(1, args.tokens // seq), "repeats": args.repeats, "prompt_len": prompt_len(seq),
            "lora_rank": rank, "lora_alpha": args.lora_alpha, "profile": args.profile,
        }  # fmt: skip
        left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - t_start)
        if left is not None and left < 10:
            label = {k: spec[k] for k in ("shape", "seq", "rows", "remat", "lora_rank")}
            r = label | {"error": f"skipped: the sweep's {args.budget_s:g} s budget is spent"}
        elif args.in_process:
            r = run_one(spec)
            _release()
        else:
            r = run_isolated(spec, args.timeout if left is None else min(args.timeout, left))
        record["results"].append(r)
        print(json.dumps(r), flush=True)
        _write(record, args.out)
    # The device and versions last: in the parent, jax starts only once no child needs the device.
    record["device"], record["versions"] = _device_name(), _versions()
    _write(record, args.out)
    return 0


def _release() -> None:
    """Between configurations run in this process: compiled programs and unreferenced buffers go."""
    import gc

    import jax

    gc.collect()
    jax.clear_caches()


if __name__ == "__main__":
    sys.exit(main())
