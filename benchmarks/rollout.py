"""Rollout throughput of the jitted sampler, optionally against transformers `generate` in the same run.

    python benchmarks/rollout.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 8 --new_tokens 32
    python benchmarks/rollout.py --shape qwen2.5-0.5b --batch 256 --prompt_len 128 --new_tokens 256 \
        --hf_baseline --dtype bfloat16 --out benchmarks/results/rollout_qwen0.5b_b256.json

Random-weight shapes (`--shape`) generate a fixed number of tokens (no stop token), which is what speed
depends on. Prints tokens/s (generated tokens / wall time of prefill + decode), prefill and decode
time, compile time, and on GPU the fraction of the decode floor: the bytes one decode step must read
(weights + the KV cache filled so far, averaged over the generation) over the measured device
copy bandwidth, divided by the measured step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch in --hf_baseline
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {
    "smollm2-135m": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "tie_word_embeddings": True, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
    },
    "qwen2.5-1.5b": {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
    },
    "qwen2.5-7b": {  # Qwen2.5-7B-Instruct's config.json
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "tie_word_embeddings": False, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
    },
    "llama-3.2-1b": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
    },
}  # fmt: skip


def _versions() -> dict[str, str]:
    import flax
    import jax

    out = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    try:
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    except ImportError:
        pass
    try:
        import torch
        import transformers

        out["torch"] = torch.__version__
        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


def _device_name() -> str:
    import subprocess

    import jax

    dev = jax.devices()[0]
    if dev.platform == "gpu":
        try:
            return subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=True,
            ).stdout.strip().splitlines()[0]  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return dev.device_kind
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Measured device memory bandwidth in bytes/s (a copy reads and writes every byte once)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001)
    jax.block_until_ready(f(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / min(times)


def _load(args):
    from rlvr_jax.models import ModelConfig, init_model
    from rlvr_jax.weights import load_model

    if args.model:
        loaded = load_model(args.model, dtype=args.dtype)
        loaded.model.cfg = loaded.model.cfg.replace(attention=args.attention)
        return loaded.model, loaded.tokenizer, loaded.hf_config, args.model
    cfg = ModelConfig.from_hf_config(
        SHAPES[args.shape], dtype=args.dtype, param_dtype=args.dtype, attention=args.attention
    )
    model = init_model(cfg, seed=0)
    # No stop token: random weights must generate exactly --new_tokens tokens.
    tokenizer = types.SimpleNamespace(pad_id=0, stop_ids=())
    return model, tokenizer, SHAPES[args.shape], args.shape


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    first = time.perf_counter()
    fn()
    first = time.perf_counter() - first
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return first, runs


def run_ours(args, model, tokenizer) -> dict:
    import jax
    import numpy as np

    from rlvr_jax.generate import Sampler, SamplingParams

    sampler = Sampler(
        model,
        tokenizer,
        prompt_buckets=(args.prompt_len,),
        new_token_buckets=(1, args.new_tokens),
        prng_impl=args.prng,
    )
    prompts = args.batch // args.group
    rng = np.random.default_rng(0)
    vocab = model.cfg.vocab_size
    ids = rng.integers(10, vocab, size=(prompts, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(ids, dtype=bool)
    full = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.new_tokens)
    one = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=1)

    def run_full():
        return sampler.generate_ids(ids, mask, full, seed=1, group_size=args.group)

    def run_prefill():
        return sampler.generate_ids(ids, mask, one, seed=1, group_size=args.group)

    first_full, full_runs = _timed(run_full, args.repeats)
    first_pre, pre_runs = _timed(run_prefill, args.repeats)
    out = jax.device_get(run_full())
    generated = int(out.mask.sum())
    total = statistics.median(full_runs)
    prefill = statistics.median(pre_runs)
    decode = max(total - prefill, 1e-9)
    steps = int(out.steps)
    result = {
        "tokens_per_s": generated / total,
        "generated_tokens": generated,
        "total_s": total,
        "prefill_s": prefill,
        "decode_s": decode,
        "decode_steps": steps,
        "decode_step_ms": 1000 * decode / max(steps - 1, 1),
        "compile_s": (first_full - total) + (first_pre - prefill),
        "runs_s": full_runs,
        "compiles": sampler.compile_count,
    }
    if jax.devices()[0].platform == "gpu":
        cfg = model.cfg
        bw = copy_bandwidth()
        itemsize = np.dtype(cfg.compute_dtype).itemsize
        param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sampler.params))
        avg_context = args.prompt_len + args.new_tokens / 2
        kv_bytes = 2 * cfg.num_layers * args.batch * avg_context * cfg.num_kv_heads * cfg.head_dim * itemsize
        floor_step = (param_bytes + kv_bytes) / bw
        result.update(
            copy_bandwidth_GBps=bw / 1e9,
            bytes_per_step=param_bytes + kv_bytes,
            decode_floor_step_ms=1000 * floor_step,
            decode_floor_fraction=floor_step / (decode / max(steps - 1, 1)),
        )
    return result


def run_hf(args, hf_config: dict) -> dict:
    """transformers `generate` on the same shapes: random weights, sampling, fixed length."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    config = transformers.AutoConfig.for_model(**hf_config)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    ids = torch.randint(10, config.vocab_size, (args.batch, args.prompt_len), device=device)

    def run(new_tokens: int = args.new_tokens):
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=args.temperature > 0,
                temperature=args.temperature or None,
                top_p=args.top_p,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )
        if device == "cuda":
            torch.cuda.synchronize()

    # A full-length warm-up (CUDA context, cuBLAS handles, allocator growth, kernel selection for every
    # sequence length), so that the timed runs are steady state, as ours are.
    _, runs = _timed(run, max(1, args.hf_repeats))
    total = statistics.median(runs)
    return {"tokens_per_s": args.batch * args.new_tokens / total, "total_s": total, "runs_s": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id, HF directory or GGUF file (real weights)")
    source.add_argument("--shape", choices=sorted(SHAPES), help="random weights of a known architecture")
    parser.add_argument("--batch", type=int, default=8, help="rows generated at once (prompts x group)")
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--group", type=int, default=1, help="samples per prompt sharing one prefill")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on GPU")
    parser.add_argument(
        "--attention", default="auto", choices=["auto", "xla"],
        help="attention kernels (ModelConfig.attention): auto = cuDNN prefill + Pallas decode on GPU",
    )  # fmt: skip
    parser.add_argument("--prng", default=None, help="JAX PRNG impl for sampling noise (e.g. rbg)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf_baseline", action="store_true", help="also time transformers generate")
    parser.add_argument("--hf_repeats", type=int, default=2, help="timed runs after a warm-up run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.batch % args.group:
        parser.error(f"--batch {args.batch} is not a multiple of --group {args.group}")

    import jax

    on_gpu = jax.devices()[0].platform == "gpu"
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    model, tokenizer, hf_config, name = _load(args)
    if args.model and args.prompt_len < 8:
        parser.error("--prompt_len must be >= 8")
    ours = run_ours(args, model, tokenizer)
    print(
        f"{name} batch={args.batch} prompt={args.prompt_len} new={args.new_tokens} group={args.group} "
        f"{args.dtype}: {ours['tokens_per_s']:,.0f} tokens/s | prefill {ours['prefill_s'] * 1000:.1f} ms | "
        f"decode {ours['decode_s'] * 1000:.1f} ms ({ours['decode_step_ms']:.2f} ms/step) | "
        f"compile {ours['compile_s']:.1f} s"
    )
    if "decode_floor_fraction" in ours:
        print(
            f"  decode floor: {ours['decode_floor_step_ms']:.3f} ms/step at "
            f"{ours['copy_bandwidth_GBps']:.0f} GB/s -> "
            f"{100 * ours['decode_floor_fraction']:.1f}% of the floor"
        )
    result = {
        "benchmark": "rollout",
        "source": name,
        "device": _device_name(),
        "versions": _versions(),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
        "ours": ours,
    }
    if args.hf_baseline:
        hf = run_hf(args, hf_config)
        result["transformers"] = hf
        result["speedup"] = ours["tokens_per_s"] / hf["tokens_per_s"]
        print(
            f"  transformers generate: {hf['tokens_per_s']:,.0f} tokens/s -> ours is {result['speedup']:.1f}x"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
