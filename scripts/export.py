"""Export a model for serving: a TF SavedModel (jax2tf, for TF Serving) or a jax.export StableHLO artifact.

    python scripts/export.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --format saved_model --out models/smollm2/1 --prompt_len 128 --max_new_tokens 64 --verify
    python scripts/export.py --model Qwen/Qwen2.5-0.5B-Instruct --format stablehlo --out /tmp/qwen-hlo

Both take left-padded int32 input_ids and attention_mask of exactly --prompt_len tokens and expose the
signatures "generate" (greedy tokens; the SavedModel's serving_default) and "logits". The batch size is
free unless --batch fixes it. See deploy/README.md for TF Serving.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if not __package__:  # run as a file (python scripts/export.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly

DEFAULT_VERIFY_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-export` command."""
    return fail_cleanly(lambda: export(argv))


def export(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__)
    parser.add_argument("--model", required=True, help="hub id, HF directory or .gguf file")
    parser.add_argument("--format", required=True, choices=["saved_model", "stablehlo"])
    parser.add_argument("--out", required=True, help="output directory (for TF Serving: BASE/NAME/VERSION)")
    parser.add_argument("--prompt_len", type=int, default=128, help="fixed (left-padded) prompt length")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="greedy tokens per request")
    parser.add_argument("--batch", type=int, default=None, help="fixed batch size (default: any)")
    parser.add_argument("--platforms", default="cpu,cuda", help="comma-separated: cpu, cuda, rocm, tpu")
    parser.add_argument("--signatures", default="generate,logits", help="comma-separated: generate, logits")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument(
        "--verify", action="store_true", help="load the export and compare its greedy tokens with JAX's"
    )
    parser.add_argument("--verify_prompt", action="append", help="prompt for --verify (repeatable)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"output {out} exists and is not empty; pass --overwrite or choose another --out")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not errors

    from rlvr_jax.export import ExportSpec
    from rlvr_jax.export.artifact import check_dependencies, export_artifact, generate_runner
    from rlvr_jax.export.verify import compare_greedy, encode_prompts
    from rlvr_jax.weights import load_model

    check_dependencies(args.format)

    spec = ExportSpec(
        prompt_len=args.prompt_len,
        max_new_tokens=args.max_new_tokens,
        batch=args.batch,
        platforms=tuple(p.strip() for p in args.platforms.split(",") if p.strip()),
        signatures=tuple(s.strip() for s in args.signatures.split(",") if s.strip()),
    )
    loaded = load_model(args.model, dtype=args.dtype)
    spec.validate(loaded.config)
    tok = loaded.tokenizer
    written = export_artifact(
        loaded.model,
        args.format,
        out,
        spec,
        stop_ids=tok.stop_ids,
        pad_id=tok.pad_id,
        tokenizer=tok,
        source=args.model,
    )
    print(f"wrote {args.format} export to {written}")
    if not args.verify:
        return 0
    if "generate" not in spec.signatures:
        raise ValueError("--verify compares greedy tokens: export the 'generate' signature too")
    prompts = args.verify_prompt or list(DEFAULT_VERIFY_PROMPTS)
    ids, mask = encode_prompts(tok, prompts, spec.prompt_len)
    run = generate_runner(args.format, written)
    result = compare_greedy(loaded.model, run, ids, mask, spec, stop_ids=tok.stop_ids, pad_id=tok.pad_id)
    print(f"verify: {result.summary()}")
    return 0 if result.equal else 1


if __name__ == "__main__":
    sys.exit(main())
