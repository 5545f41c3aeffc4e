"""Convert a model to a Hugging Face directory that transformers (and vLLM, TGI, llama.cpp) loads.

    python scripts/convert.py --input ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --output /tmp/smollm2
    python scripts/convert.py --input runs/quickstart --step best --output /tmp/quickstart-best

--input takes a hub id, an HF directory or a GGUF file (dequantised to float32 by default), or a training
workdir (config.json + checkpoints/), whose checkpoint --step (latest, best or a step number) is converted
with the model the run's config names.
--push_to_hub OWNER/NAME also uploads the written directory to that hub repository (created if missing,
--private to create it private); the token comes from HF_TOKEN or `hf auth login`.
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
    parser.add_argument("--input", required=True, help="hub id, HF directory, .gguf file or training workdir")
    parser.add_argument("--step", help="training workdir only: latest (default), best or a step number")
    parser.add_argument("--output", required=True, help="directory to write (created)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--force", action="store_true", help="write into a non-empty output directory")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="then upload the output to this hub repo")
    parser.add_argument("--private", action="store_true", help="--push_to_hub creates the repo private")
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private applies to --push_to_hub REPO_ID; pass both")
    if args.push_to_hub:  # a missing token or a bad name fails now, not after the conversion
        from rlvr_jax.weights.hub import check_repo_id, hub_token

        check_repo_id(args.push_to_hub)
        hub_token()

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"output directory {out} is not empty; pass --force to overwrite files in it")

    from rlvr_jax.evaluation.evaluate import is_training_run, load_training_run
    from rlvr_jax.weights import export_hf, load_model

    if is_training_run(args.input):
        step = args.step or "latest"
        if not (step.isdigit() or step in ("latest", "best")):
            raise ValueError(f"--step must be latest, best or a step number, got {step!r}")
        model, tokenizer, source = load_training_run(args.input, int(step) if step.isdigit() else step)
        origin = f" from {source['checkpoint']}/{source['checkpoint_step']}"
    elif args.step is not None:
        raise ValueError(
            f"--step picks a checkpoint of a training workdir (config.json + checkpoints/); {args.input} "
            "is not one"
        )
    else:
        loaded = load_model(args.input)
        model, tokenizer, origin = loaded.model, loaded.tokenizer, ""
    export_hf(model, out, tokenizer, dtype=args.dtype)
    cfg = model.cfg
    print(
        f"wrote {out} ({cfg.family}, {cfg.num_layers} layers, "
        f"{cfg.num_params() / 1e6:.1f}M parameters, {args.dtype}){origin}"
    )
    if args.push_to_hub:
        from rlvr_jax.weights.hub import push_to_hub

        url = push_to_hub(out, args.push_to_hub, private=args.private)
        print(f"pushed {out} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
