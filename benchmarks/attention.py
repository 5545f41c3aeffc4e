"""Attention kernels alone: the einsum reference against cuDNN (prefill) and Pallas (decode), on one shape.

    python benchmarks/attention.py --batch 256 --heads 14 --kv_heads 2 --head_dim 64 --prompt_len 128 \
        --new_tokens 256 --out benchmarks/results/attention_qwen2.5-0.5b_b256.json

Checks that every kernel `ModelConfig.attention="auto"` selects gives the reference's numbers on this
device (max |diff| in the compute dtype), and times each one: a prefill over the prompt, and one decode
step with the cache filled up to the middle of the generation (what an average rollout step sees). On CPU
the Pallas kernel runs in interpret mode (a correctness check, not a speed one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rollout import _device_name, _versions


def _time(fn, *args, repeats: int = 20) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on GPU")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax.models import decoder as dec

    on_gpu = jax.default_backend() == "gpu"
    dtype = jnp.dtype(args.dtype or ("bfloat16" if on_gpu else "float32"))
    B, H, K, D = args.batch, args.heads, args.kv_heads, args.head_dim
    P, S = args.prompt_len, args.prompt_len + args.new_tokens
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
    k, v = normal(B, K, S, D), normal(B, K, S, D)
    padding = rng.integers(0, P // 2, size=B)  # left padding of each row's prompt
    results: dict = {}

    # Prefill: queries are the prompt slots, keys the cache (empty beyond the prompt).
    q = normal(B, P, H, D)
    valid = jnp.asarray(np.arange(S)[None, :] >= padding[:, None]) & (jnp.arange(S) < P)[None, :]
    slots = jnp.arange(P, dtype=jnp.int32)
    ref = jax.jit(lambda q, k, v: dec.attention(q, k, v, slots, valid, 0, impl="xla"))
    fast = jax.jit(lambda q, k, v: dec.attention(q, k, v, slots, valid, 0, impl="auto"))
    keep = np.arange(P)[None, :] >= padding[:, None]  # padded queries attend to nothing: not compared
    diff = np.abs(np.asarray(ref(q, k, v), np.float32) - np.asarray(fast(q, k, v), np.float32))
    results["prefill"] = {
        "kernel": "cudnn" if on_gpu and dtype != jnp.float32 else "xla (jax.nn.dot_product_attention)",
        "max_abs_diff": float(diff[keep].max()),
        "reference_ms": 1000 * _time(ref, q, k, v),
        "fast_ms": 1000 * _time(fast, q, k, v),
    }

    # One decode step at the middle of the generation.
    current = P + args.new_tokens // 2
    q1 = normal(B, 1, H, D)
    valid1 = jnp.asarray((np.arange(S)[None, :] >= padding[:, None]) & (np.arange(S)[None, :] <= current))
    slot1 = jnp.array([current], jnp.int32)
    ref1 = jax.jit(lambda q, k, v: dec.attention(q, k, v, slot1, valid1, 0, impl="xla"))
    fast1 = jax.jit(
        lambda q, k, v: dec._decode_attention_pallas(q, k, v, slot1, valid1, 0, interpret=not on_gpu)
    )
    diff1 = np.abs(np.asarray(ref1(q1, k, v), np.float32) - np.asarray(fast1(q1, k, v), np.float32))
    filled = 2 * B * K * (current + 1 - padding.mean()) * D * dtype.itemsize  # K and V bytes up to the slot
    results["decode_step"] = {
        "kernel": "pallas flash-decoding" + ("" if on_gpu else " (interpret mode)"),
        "max_abs_diff": float(diff1.max()),
        "reference_ms": 1000 * _time(ref1, q1, k, v),
        "fast_ms": 1000 * _time(fast1, q1, k, v),
        "filled_cache_bytes": float(filled),
        "whole_cache_bytes": float(2 * B * K * S * D * dtype.itemsize),
    }
    for name, r in results.items():
        print(
            f"{name}: {r['kernel']} {r['fast_ms']:.3f} ms vs einsum {r['reference_ms']:.3f} ms, "
            f"max |diff| {r['max_abs_diff']:.2e}"
        )
    out = {
        "benchmark": "attention",
        "device": _device_name(),
        "versions": _versions(),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "args": {**vars(args), "dtype": str(dtype)},
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
