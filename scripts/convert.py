"""Convert a model to a Hugging Face directory that transformers (and vLLM, TGI, llama.cpp) loads.

    python scripts/convert.py --input ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --output /tmp/smollm2

--input takes a hub id, an HF directory or a GGUF file (dequantised to float32 by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file (python scripts/convert.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-convert` command."""
    return fail_cleanly(lambda: convert(argv))


def convert(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__)
    parser.add_argument("--input", required=True, help="hub id, HF directory or .gguf file")
    parser.add_argument("--output", required=True, help="directory to write (created)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--force", action="store_true", help="write into a non-empty output directory")
    args = parser.parse_args(argv)

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"output directory {out} is not empty; pass --force to overwrite files in it")

    from rlvr_jax.weights import export_hf, load_model

    loaded = load_model(args.input)
    export_hf(loaded.model, out, loaded.tokenizer, dtype=args.dtype)
    cfg = loaded.config
    print(
        f"wrote {out} ({cfg.family}, {cfg.num_layers} layers, "
        f"{cfg.num_params() / 1e6:.1f}M parameters, {args.dtype})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
