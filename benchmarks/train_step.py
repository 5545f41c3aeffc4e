"""Train-step speed: policy log-probs + GRPO loss + backward + AdamW update, at real model shapes.

    python benchmarks/train_step.py --shape qwen2.5-0.5b --seq 512 1024 --tokens 32768 \
        --out benchmarks/results/train_step_h100.json
    python benchmarks/train_step.py --shape smollm2-135m --seq 128 --tokens 2048 --repeats 2   # CPU smoke

Random weights (speed does not depend on their values), bf16 compute with fp32 master weights and Adam
state, as the trainer runs. For each shape x sequence length x remat policy: the step time (median of
--repeats after a compiling call), tokens/s, model TFLOP/s and MFU (model FLOPs as the trainer counts
them: 6 per parameter per token plus attention, remat recomputation not counted) and device memory (per
configuration from the compiled program; the runtime high-water mark is per process).
Rows per step = --tokens / seq, so every sequence length trains on the same number of tokens. A policy
that runs out of memory is recorded as such and the sweep goes on.

--profile DIR traces one more step of each configuration with jax.profiler and adds where the device time
went: matmul kernels (cuBLAS / nvjet / cutlass), attention, XLA fusions (elementwise, softmax, the
log-softmax over the vocabulary, the optimizer update) and the rest, with the largest kernels. That is the
answer to "why is MFU below the matmul roofline": only the matmul share runs near peak.
"""

from __future__ import annotations

import argparse
import datetime
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


def compiled_memory(step: Any, *args: Any) -> dict[str, float] | None:
    """What XLA plans for one call of the jitted `step` on `args`, in GB: its arguments, outputs,
    temporaries, the bytes it aliases (donated state written in place), and the peak that implies
    (arguments + outputs - aliased + temporaries). Per configuration, from the compiled program.

    The runtime counter `peak_bytes_in_use` is the process's high-water mark since it started: in a sweep
    it keeps the largest configuration's peak for every later one (the 2026-12-04 H200 run reported
    83.34 GB for every configuration). None where the backend gives no analysis."""
    try:
        analysis = step.lower(*args).compile().memory_analysis()
    except Exception:  # a backend without the analysis, or a step that is not a plain jax.jit
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


def run_one(
    shape: str, seq: int, rows: int, remat: str, repeats: int, prompt_len: int, profile: str | None = None
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rlvr_jax.models import ModelConfig, init_model
    from rlvr_jax.monitoring.metrics import model_flops, peak_flops
    from rlvr_jax.optim import OptimConfig, init_train_state, make_optimizer
    from rlvr_jax.optim.memory import random_train_batch
    from rlvr_jax.rl import LossConfig
    from rlvr_jax.rl.update import make_train_step

    cfg = ModelConfig.from_hf_config(SHAPES[shape], dtype="bfloat16", param_dtype="float32", remat=remat)
    model = init_model(cfg, seed=0)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, total_steps=1000))
    state = init_train_state(model, optimizer)
    completion = seq - prompt_len
    step = make_train_step(
        nnx.graphdef(model), optimizer, LossConfig(clip_high=0.28, max_len=completion), temperature=1.0
    )
    del model
    batch = jax.tree.map(jnp.asarray, random_train_batch(rows, prompt_len, completion, cfg.vocab_size))
    result = {"shape": shape, "seq": seq, "rows": rows, "tokens_per_step": rows * seq, "remat": remat}
    try:
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        result["first_call_s"] = round(time.perf_counter() - t0, 2)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    except Exception as e:  # an OOM is a result of the sweep, not its end
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        result["error"] = "out of memory"
        return result
    if profile:
        trace_dir = Path(profile) / f"{shape}_s{seq}_{remat}"
        with jax.profiler.trace(str(trace_dir)):
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
        try:
            result["profile"] = kernel_breakdown(str(trace_dir))
        except FileNotFoundError as e:  # no device plane (CPU) or the profiler wrote nothing
            result["profile"] = {"error": str(e)}
    result["compiled_memory"] = compiled_memory(step, state, batch)  # after the timings: its compile is extra
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
        # The process's high-water mark so far (monotone over a sweep); compiled_memory is per configuration.
        "process_peak_memory_gb": round(peak_bytes / 1e9, 2) if peak_bytes else None,
        "params_m": round(cfg.num_params() / 1e6, 1),
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-1.5b"], choices=sorted(SHAPES))
    p.add_argument("--seq", nargs="+", type=int, default=[512, 1024], help="prompt + completion tokens")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step (rows = tokens / seq)")
    p.add_argument("--remat", nargs="+", default=["full", "none"], choices=["none", "full", "dots"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--profile", help="trace one step per configuration into this folder and summarise it")
    args = p.parse_args(argv)

    import jax

    results = []
    for shape in args.shape:
        for seq in args.seq:
            for remat in args.remat:
                r = run_one(
                    shape, seq, max(1, args.tokens // seq), remat, args.repeats, args.prompt_len, args.profile
                )
                results.append(r)
                print(json.dumps(r), flush=True)
                jax.clear_caches()
    record = {
        "benchmark": "train step (log-probs + GRPO loss + backward + AdamW), random weights",
        "device": _device_name(),
        "date": datetime.date.today().isoformat(),
        "versions": _versions(),
        "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
