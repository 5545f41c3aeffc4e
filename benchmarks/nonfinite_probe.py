"""Which update configurations give a non-finite gradient on this device (diagnosis of the NQ runs whose
every update was skipped on an H100, 2026-12-06): random Qwen2.5-0.5B-shaped weights, a batch laid out as
the trainer's (left-padded prompts, right-padded completions), the grad norm per configuration.

    python benchmarks/nonfinite_probe.py [OUT.json]

One JSON line per result on stdout; with OUT.json also all of them in one file (with the device and the
versions), e.g. benchmarks/results/nonfinite_probe_h100.json. PROBE_N runs only the first N variants.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.rollout import SHAPES
from rlvr_jax.models import ModelConfig, decoder, init_model
from rlvr_jax.optim import OptimConfig, init_train_state, make_optimizer
from rlvr_jax.optim.memory import random_train_batch
from rlvr_jax.rl import LossConfig
from rlvr_jax.rl.update import make_train_step


def padded_batch(rows: int, P: int, N: int, vocab: int, pad: bool, seed: int = 0) -> dict:
    b = random_train_batch(rows, P, N, vocab, seed)
    if not pad:
        return b
    rng = np.random.default_rng(seed + 1)
    for r in range(rows):
        left = int(rng.integers(0, P - 4))
        n = int(rng.integers(1, N + 1))
        b["attn_mask"][r, :left] = False
        b["tokens"][r, :left] = 0
        b["completion_mask"][r, n:] = False
        b["attn_mask"][r, P + n :] = False
        b["tokens"][r, P + n :] = 0
    return b


def attention_check() -> dict:
    """jax.nn.dot_product_attention (cuDNN on GPU) with fully masked query rows (left padding), forward and
    gradient, at sequence lengths 64, 128 and 192 (NQ's update is 128 prompt + 64 completion slots; a
    reported cuDNN flash backward bug gives NaN in dQ at lengths = 64 mod 128 when a row's log-sum-exp is
    far below zero, as a fully masked row's is); and the same with each query allowed its own slot (the
    product's mask since 2026-12-07, `rlvr_jax.models.decoder._allowed`)."""
    out = {}
    for T in (64, 128, 192):
        rng = np.random.default_rng(T)
        B, H, D = 2, 4, 64
        q, k, v = (jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.bfloat16) for _ in range(3))
        valid = np.ones((B, T), bool)
        valid[:, :10] = False  # left padding: queries 0..9 see no valid key
        causal = np.tril(np.ones((T, T), bool))
        raw = causal[None] & valid[:, None, :]
        masks = {"raw": jnp.asarray(raw)[:, None], "self": jnp.asarray(raw | np.eye(T, dtype=bool))[:, None]}
        w = jnp.asarray(valid, jnp.float32)[:, :, None, None]  # the loss reads only valid positions

        def loss(q: jax.Array, k: jax.Array, v: jax.Array, impl: str, mask: jax.Array, w=w) -> jax.Array:
            o = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
            return jnp.sum(o.astype(jnp.float32) * w)

        for impl, name in [(i, n) for i in ("xla", "cudnn") for n in masks]:
            key = f"{impl}_{name}_T{T}"
            try:
                o = jax.nn.dot_product_attention(q, k, v, mask=masks[name], implementation=impl)
                g = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, impl, masks[name])
                out[key] = {
                    "forward_finite_valid_rows": bool(jnp.isfinite(o[:, 10:]).all()),
                    "forward_finite_masked_rows": bool(jnp.isfinite(o[:, :10]).all()),
                    "grad_finite_qkv": [bool(jnp.isfinite(x).all()) for x in g],
                }
            except Exception as e:
                out[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return out


def product_attention_check(scale: float = 8.0) -> dict:
    """The product's attention (`rlvr_jax.models.decoder.attention`, "xla" and "auto" = cuDNN on a GPU) at
    64, 192 and 256 slots with large scores (q and k scaled by 8, as real models' outlier heads give): is
    the gradient finite, and how far apart are the two outputs on real (valid) rows."""
    out = {}
    for T in (64, 192, 256):
        rng = np.random.default_rng(T)
        B, H, K, D = 4, 14, 2, 64
        q = jnp.asarray(rng.standard_normal((B, T, H, D)) * scale, jnp.bfloat16)
        k = jnp.asarray(rng.standard_normal((B, K, T, D)) * scale, jnp.bfloat16)
        v = jnp.asarray(rng.standard_normal((B, K, T, D)), jnp.bfloat16)
        valid = np.ones((B, T), bool)
        valid[:, :40] = False  # left-padded prompt
        valid[:, T - 20 :] = False  # right-padded completion
        slots, kv = jnp.arange(T, dtype=jnp.int32), jnp.asarray(valid)
        w = jnp.asarray(valid, jnp.float32)[:, :, None, None]
        outs = {}
        for impl in ("xla", "auto"):

            def f(q: jax.Array, k: jax.Array, v: jax.Array, impl=impl, slots=slots, kv=kv, w=w) -> jax.Array:
                return jnp.sum(decoder.attention(q, k, v, slots, kv, 0, impl=impl).astype(jnp.float32) * w)

            g = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
            out[f"{impl}_T{T}"] = [bool(jnp.isfinite(x).all()) for x in g]
            outs[impl] = decoder.attention(q, k, v, slots, kv, 0, impl=impl).astype(jnp.float32)
        out[f"max_abs_diff_valid_rows_T{T}"] = float(jnp.max(jnp.abs(outs["xla"] - outs["auto"]) * w))
    return out


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else None
    record = {
        "benchmark": "nonfinite_probe", "device": jax.devices()[0].device_kind,
        "versions": {"jax": jax.__version__}, "command": " ".join(["python", *sys.argv]),
        "attention": attention_check(), "product_attention": product_attention_check(), "updates": [],
    }  # fmt: skip
    print(json.dumps({k: record[k] for k in ("device", "attention", "product_attention")}), flush=True)
    hf = SHAPES[os.environ.get("PROBE_SHAPE", "qwen2.5-0.5b")]
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, total_steps=1000))
    variants = [  # the NQ runs' update first (remat none, 4 micro-batches, 128 + 64 slots, the old mask),
        # then the product's mask, then one switch changed at a time
        # mask, remat, attention, micro, pad, rows, P, N
        ("raw", "none", "auto", 4, True, 256, 128, 64),
        ("self", "none", "auto", 4, True, 256, 128, 64),
        ("raw", "none", "xla", 4, True, 256, 128, 64),
        ("raw", "full", "auto", 4, True, 256, 128, 64),
        ("raw", "none", "auto", 4, True, 256, 64, 64),
        ("raw", "none", "auto", 4, False, 256, 128, 64),
        ("raw", "none", "auto", 1, True, 32, 256, 512),
    ]
    product_allowed = decoder._allowed
    todo = variants[: int(os.environ.get("PROBE_N", len(variants)))]
    for mask, remat, attn, micro, pad, rows, P, N in todo:
        # "raw": the mask before 2026-12-07, left-padding queries' rows fully masked
        decoder._allowed = functools.partial(product_allowed, own_slot=mask != "raw")
        t0 = time.perf_counter()
        cfg = ModelConfig.from_hf_config(hf, dtype="bfloat16", param_dtype="float32", remat=remat)
        cfg = cfg.replace(attention=attn)
        model = init_model(cfg, seed=0)
        state = init_train_state(model, optimizer, master_dtype="float32", cfg=cfg)
        step = make_train_step(
            nnx.graphdef(model), optimizer, LossConfig(), temperature=1.0, micro_batches=micro
        )
        del model
        rows //= int(os.environ.get("PROBE_ROWS_DIV", 1))  # smaller on a CPU check
        batch = jax.tree.map(jnp.asarray, padded_batch(rows, P, N, cfg.vocab_size, pad))
        state, m = step(state, batch)
        m = jax.device_get(m)
        result = {
            "mask": mask, "remat": remat, "attention": attn, "micro": micro, "pad": pad, "rows": rows,
            "P": P, "N": N,
            "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "skipped": float(m["skipped"]),
            "s": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        print(json.dumps(result), flush=True)
        record["updates"].append(result)
        if out:  # after every variant: what ran survives a timeout
            with open(out, "w") as f:
                json.dump(record, f, indent=1, default=str)
        del state


if __name__ == "__main__":
    main()
