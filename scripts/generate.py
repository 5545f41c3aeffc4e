"""Generate a completion from any supported model source.

    python scripts/generate.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --chat \
        --prompt "What is the capital of France?" --max_new_tokens 16 --temperature 0

--model takes a Hugging Face hub id, a local HF directory or a GGUF file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python scripts/generate.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-generate` command."""
    return fail_cleanly(lambda: generate(argv))


def generate(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__)
    parser.add_argument("--model", required=True, help="hub id, HF directory or .gguf file")
    parser.add_argument("--prompt", required=True, action="append", help="prompt text (repeat for a batch)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--system", default=None, help="system message (with --chat)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--verbose", action="store_true", help="print timing to stderr")
    args = parser.parse_args(argv)

    from rlvr_jax.generate import Sampler, SamplingParams
    from rlvr_jax.weights import load_model

    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens
    )
    t0 = time.perf_counter()
    loaded = load_model(args.model, dtype=args.dtype)
    t1 = time.perf_counter()
    sampler = Sampler(loaded.model, loaded.tokenizer)
    results = sampler.complete(
        args.prompt, params, chat=args.chat, system=args.system, seed=args.seed, group_size=args.num_samples
    )
    t2 = time.perf_counter()
    several = len(results) > 1 or len(results[0]) > 1
    for i, group in enumerate(results):
        for j, completion in enumerate(group):
            if several:  # a header per completion, so that multi-line answers stay apart
                prompt = f"prompt {i + 1}/{len(results)}, " if len(results) > 1 else ""
                print(f"--- {prompt}sample {j + 1}/{len(group)} ---")
            print(completion.text)
    if args.verbose:
        tokens = sum(len(c.token_ids) for g in results for c in g)
        print(
            f"[load {t1 - t0:.1f}s, compile+generate {t2 - t1:.1f}s, {tokens} tokens]",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
