"""Where a decode step's time goes: a jax.profiler trace of the sampler, summarised by kernel.

    python benchmarks/profile_decode.py --shape qwen2.5-0.5b --batch 256 --prompt_len 128 --new_tokens 64

Runs the sampler once to compile, then traces one call and prints the device kernels that took the most
time (summed over all launches), grouped by the XLA fusion / kernel name, plus the share of each. The raw
trace is kept under --trace_dir for TensorBoard / Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rollout import SHAPES


def device_kernel_times(trace_dir: str) -> list[tuple[str, float, int]]:
    """(kernel name, total microseconds, launches) on device planes, largest first."""
    from jax.profiler import ProfileData

    files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
    if not files:
        raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
    data = ProfileData.from_file(str(files[-1]))
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        lines = list(plane.lines)
        print(f"{plane.name}: lines {[line.name for line in lines]}")
        # Kernel launches live on the stream lines; XLA's op/module lines summarise the same time.
        streams = [line for line in lines if "Stream" in line.name] or [
            line for line in lines if line.name not in ("XLA Modules", "XLA Ops", "Steps")
        ]
        for line in streams:
            for event in line.events:
                totals[event.name] += event.duration_ns / 1e3
                counts[event.name] += 1
    return sorted(((n, t, counts[n]) for n, t in totals.items()), key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trace_dir", default=None)
    parser.add_argument("--out", default=None, help="write the summary as JSON")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from rlvr_jax.generate import Sampler, SamplingParams
    from rlvr_jax.models import ModelConfig, init_model

    cfg = ModelConfig.from_hf_config(SHAPES[args.shape], dtype=args.dtype, param_dtype=args.dtype)
    model = init_model(cfg)
    sampler = Sampler(
        model,
        types.SimpleNamespace(pad_id=0, stop_ids=()),
        prompt_buckets=(args.prompt_len,),
        new_token_buckets=(args.new_tokens,),
    )
    ids = (
        np.random.default_rng(0).integers(10, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    )
    mask = np.ones_like(ids, dtype=bool)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    sampler.generate_ids(ids, mask, params)  # compile
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="rlvr-trace-")
    with jax.profiler.trace(trace_dir):
        sampler.generate_ids(ids, mask, params)
    rows = device_kernel_times(trace_dir)
    total = sum(t for _, t, _ in rows)
    steps = args.new_tokens
    print(
        f"device time {total / 1e3:.1f} ms for prefill + {steps} decode steps ({total / steps:.0f} us/step)"
    )
    for name, t, n in rows[: args.top]:
        print(f"{100 * t / total:5.1f}%  {t / 1e3:8.2f} ms  {n:6d}x  {name[:110]}")
    if args.out:
        summary = {
            "shape": args.shape,
            "batch": args.batch,
            "prompt_len": args.prompt_len,
            "new_tokens": steps,
            "device_ms": total / 1e3,
            "kernels": [{"name": n, "ms": t / 1e3, "launches": c} for n, t, c in rows[:60]],
        }
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
