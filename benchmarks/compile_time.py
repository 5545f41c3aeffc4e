"""Where the sampler's compile time goes, each variant compiled in a fresh process with JAX's persistent
cache off: `before` (the sampler until 2026-12-07: one jit of `generate`, its prefill unrolled over the
layers into the KV cache), `fused` (one jit of `generate` with today's scanned prefill, `prefill_cache`)
and `split` (today's `Sampler`: the prefill and the decode loop as two programs).

    python benchmarks/compile_time.py --shape qwen2.5-0.5b --rows 32 --group 8 --prompt_len 128 \
        --new_tokens 256 --variants before fused split --out benchmarks/results/compile_time_h200.json

Why: the trainer's warm-up spent 140 s on an H200 compiling GSM8K's three prompt buckets, two thirds of
it in the sampler (31-36 s a bucket against 10-14 s for the update), and the speed issue asks for a first
step compiled in under 30 s. Every variant runs in its own process because XLA keeps autotuning results
in memory: a second compile in the same process would find the first one's and look faster than it is.
Each line gives trace / lower / compile seconds per program and the run time of one whole rollout (median
of `--repeats`), so a variant that compiles faster but samples slower shows it. Random weights, no stop
token: every row decodes `--new_tokens` tokens.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rollout import SHAPES

VARIANTS = ("before", "fused", "split")


def _timed_compile(jitted, *args) -> dict[str, float]:
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2}


def measure(args: argparse.Namespace, variant: str) -> dict:
    """One variant in this process: compile times per program, then the rollout's run time."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax.generate import Sampler, SamplingParams
    from rlvr_jax.generate.sampler import generate
    from rlvr_jax.models import ModelConfig, init_model

    cfg = ModelConfig.from_hf_config(SHAPES[args.shape], dtype="bfloat16", param_dtype="bfloat16")
    model = init_model(cfg, seed=0)
    sampler = Sampler(
        model,
        types.SimpleNamespace(pad_id=0, stop_ids=()),
        prompt_buckets=(args.prompt_len,),
        new_token_buckets=(args.new_tokens,),
    )
    ids = np.random.default_rng(0).integers(10, cfg.vocab_size, (args.rows, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(ids, dtype=bool)
    params = SamplingParams(temperature=1.0, top_p=args.top_p, max_new_tokens=args.new_tokens)
    key, ids, mask, row_params, limit = sampler._prepare(ids, mask, params, args.group, None)
    rng = jax.random.key(0)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    until = jnp.asarray(limit, jnp.int32)
    programs: dict[str, dict[str, float]] = {}
    if variant == "before":  # the prefill as it was until 2026-12-07: the layers unrolled into the cache
        from rlvr_jax.generate import sampler as sampler_module
        from rlvr_jax.models.decoder import KVCache, apply

        def unrolled_prefill_cache(cfg, arrays, tokens, mask, max_len, dtype=None):
            cache = KVCache.init(cfg, tokens.shape[0], max_len, dtype)
            return apply(cfg, arrays, tokens, mask=mask, cache=cache, return_hidden=True)

        sampler_module.prefill_cache = unrolled_prefill_cache  # this child process only
    if variant in ("before", "fused"):  # one jit of the pure `generate`, as the sampler was until 2026-12-07
        fn = jax.jit(functools.partial(generate, sampler.graphdef, **sampler._static(key)))
        programs["sampler"] = _timed_compile(fn, sampler.params, ids, mask, rng, row_params, until)

        def run():
            return fn(sampler.params, ids, mask, rng, row_params, until)
    else:  # the sampler's `_Rollout`: the weight preparation (one program for all buckets), then per
        # bucket the prefill and the decode loop
        rollout = sampler._fn(key)
        programs["prepare"] = _timed_compile(rollout.prepare, sampler.params)
        arrays = rollout.prepare(sampler.params)
        programs["prefill"] = _timed_compile(rollout.prefill, arrays, ids, mask, rng, row_params)
        state = rollout.prefill(arrays, ids, mask, rng, row_params)
        programs["decode"] = _timed_compile(rollout.decode, arrays, state, row_params, until)
        del arrays, state

        def run():
            return rollout(sampler.params, ids, mask, rng, row_params, until)

    jax.block_until_ready(run())  # first run: loads the executables
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
    total = {k: sum(p[k] for p in programs.values()) for k in ("trace_s", "lower_s", "compile_s")}
    return {
        "variant": variant,
        "programs": {n: {k: round(v, 3) for k, v in p.items()} for n, p in programs.items()},
        "total": {k: round(v, 3) for k, v in total.items()},
        "run_s": round(statistics.median(times), 4),
        "tokens": int(np.asarray(out.mask).sum()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--rows", type=int, default=32, help="prompts")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--xla_flags", nargs="*", default=[""], help="one fresh run per XLA_FLAGS string")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process's variant
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    if args.one:
        print("RESULT " + json.dumps(measure(args, args.one)), flush=True)
        return 0

    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = []
    for flags in args.xla_flags:
        for variant in args.variants:
            env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
            if flags:
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
            t0 = time.perf_counter()
            child = subprocess.run(
                [sys.executable, __file__, *base, "--one", variant], env=env, capture_output=True, text=True
            )
            lines = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
            if child.returncode or not lines:
                print(f"{variant} [{flags}] failed:\n{child.stderr[-3000:]}", file=sys.stderr)
                continue
            result = json.loads(lines[-1][len("RESULT ") :])
            result["process_s"] = round(time.perf_counter() - t0, 1)
            results.append(result)
            parts = "  ".join(
                f"{n} {p['trace_s']:.1f}+{p['lower_s']:.1f}+{p['compile_s']:.1f}"
                for n, p in result["programs"].items()
            )
            print(
                f"{variant:6s} [{flags or 'default flags'}]  compile {result['total']['compile_s']:.1f} s "
                f"(trace+lower+compile: {parts})  rollout {result['run_s']:.3f} s",
                flush=True,
            )
    if args.out:
        import jax

        device = jax.devices()[0]
        report = {
            "benchmark": "compile_time",
            "shape": args.shape,
            "rows": args.rows,
            "group": args.group,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "results": results,
            "device": getattr(device, "device_kind", str(device)),
            "platform": platform.platform(),
            "versions": {"jax": jax.__version__, "python": platform.python_version()},
            "command": "python benchmarks/compile_time.py " + " ".join(base),
            "date": time.strftime("%Y-%m-%d"),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
