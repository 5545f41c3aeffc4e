"""Serve a model over an OpenAI-compatible HTTP API (completions, chat completions, SSE streaming).

    python scripts/serve.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "Hi"}]}'

--model takes a Hugging Face hub id, a local HF directory, a GGUF file, or a training workdir (the
--workdir of scripts/train.py, or its checkpoints/ folder): then it serves the run's checkpoint
(--checkpoint_step latest, best or a step number) on the base model its config.json names:

    python scripts/serve.py --model runs/gsm8k --checkpoint_step best --port 8000

Log-probs: completions take `logprobs: k` (and `echo: true` for the prompt's, with `max_tokens: 0` to
score a prompt only), chat takes `logprobs: true, top_logprobs: k`; k is at most --max_logprobs (20).

The server listens at once (GET /health answers); the model loads and every bucket compiles in the
background, and GET /ready turns 200 when that is done.

--engine continuous (the default) batches continuously: --max_batch decode slots over one preallocated KV
cache; a request is prefilled and joins the running batch between device calls of --stream_chunk_tokens
steps, and leaves it (freeing its slot) as soon as it is done, so a short answer never waits for a long
one. --engine static runs each batch from prefill to its last token (new requests wait for it); it is kept
for comparison (benchmarks/serve_h200.sh measures both). GET /metrics is Prometheus. SIGTERM / Ctrl-C stop
taking new connections and finish the requests in flight before exiting.

It listens on 127.0.0.1 unless --host says otherwise (--host 0.0.0.0: every interface, as the Docker
image does). --api_key KEY (or the environment variable RLVR_API_KEY, which keeps the key out of `ps`)
makes every route but /health, /ready, /metrics and the API description require
`Authorization: Bearer KEY`. Connections must send a complete request head within --header_timeout
seconds, each part of a body within --body_timeout, and idle keep-alive connections close after
--keep_alive_timeout.

Flags are spelt as in every script (--name=value or --name value, underscores; the dashed spelling is
accepted too), and vLLM's spellings work where they mean the same: --served-model-name, --host, --port,
--api-key, --dtype, --seed, --max-num-seqs (= --max_batch), --uvicorn-log-level (= --log_level).

--drift_reference PROFILE.json (written by `scripts/drift.py --save_profile`) turns on drift monitoring:
the last --drift_window prompts and responses are compared with the profile, the rlvr_drift_* gauges
appear in /metrics, and POST /v1/feedback {"id", "index", "outcome"} adds verified outcomes (pass-rate
drift).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python scripts/serve.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.cli import FlagParser, fail_cleanly
from rlvr_jax.serving.config import (
    DEFAULT_NEW_TOKEN_BUCKETS,
    DEFAULT_PROMPT_BUCKETS,
    MAX_LOGPROBS,
    ServerConfig,
    check_api_key,
    parse_buckets,
)

API_KEY_ENV = "RLVR_API_KEY"
MAX_DRIFT_WINDOW = 10_000_000


def default_model_name(src: str) -> str:
    """What clients pass as `model`: a GGUF file's or directory's name (a training workdir's, for its
    checkpoints/ folder), or the hub id itself."""
    path = Path(src).expanduser()
    if path.is_file():
        return path.stem
    if path.is_dir():
        path = path.resolve()
        return path.parent.name if path.name == "checkpoints" else path.name
    return src


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _buckets(text: str) -> str:
    return ",".join(str(b) for b in text)


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(description=__doc__)
    p.add_argument("--model", required=True, help="hub id, HF directory, .gguf file or training workdir")
    p.add_argument(
        "--checkpoint_step", default=None,
        help="with a training workdir: latest (default), best (best held-out accuracy) or a step number",
    )  # fmt: skip
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only; 0.0.0.0: all)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api_key", dest="api_key", default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' on the API routes (default: ${API_KEY_ENV}, else none)",
    )  # fmt: skip
    p.add_argument("--header_timeout", type=float, default=10.0, help="seconds to send a request head")
    p.add_argument("--body_timeout", type=float, default=30.0, help="seconds for each part of a request body")
    p.add_argument("--keep_alive_timeout", type=float, default=5.0, help="seconds an idle connection stays")
    p.add_argument("--served_model_name", default=None, help="the `model` name clients send")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--engine", default="continuous", choices=["continuous", "static"],
        help="continuous batching over decode slots, or static batches (see above)",
    )  # fmt: skip
    p.add_argument(
        "--max_batch", "--max_num_seqs", type=int, default=8,
        help="most rows (choices) decoded together (continuous: slots)",
    )  # fmt: skip
    p.add_argument(
        "--batch_buckets", default=None,
        help="batch sizes compiled (continuous: prefill sizes and slot prefixes decoded; default: max_batch)",
    )  # fmt: skip
    p.add_argument("--max_queue", type=int, default=64, help="most requests waiting; beyond it: 429")
    p.add_argument(
        "--batch_wait_ms", type=float, default=5.0,
        help="how long a batch waits to fill up (continuous: only when no slot is busy)",
    )  # fmt: skip
    p.add_argument("--prompt_buckets", default=_buckets(DEFAULT_PROMPT_BUCKETS), help="prompt lengths")
    p.add_argument(
        "--new_token_buckets", default=_buckets(DEFAULT_NEW_TOKEN_BUCKETS), help="completion lengths compiled"
    )
    p.add_argument("--max_prompt_tokens", type=int, default=0, help="default: the largest prompt bucket")
    p.add_argument("--max_tokens_limit", type=int, default=0, help="default: the largest new-token bucket")
    p.add_argument("--max_model_len", type=int, help=argparse.SUPPRESS)  # vLLM's flag: see check_args
    p.add_argument("--request_timeout", type=float, default=120.0, help="seconds, queueing included")
    p.add_argument(
        "--stream_chunk_tokens", type=int, default=8,
        help="decode steps between streamed chunks (continuous: per device call, between admissions)",
    )  # fmt: skip
    p.add_argument("--max_body_bytes", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max_logprobs", type=int, default=MAX_LOGPROBS,
        help=f"most log-prob alternatives per token a request may ask for (0..{MAX_LOGPROBS}; 0: none)",
    )  # fmt: skip
    p.add_argument("--compilation_cache", default=None, help="persistent JAX compilation cache directory")
    p.add_argument(
        "--log_level", "--uvicorn_log_level", default="info", choices=["debug", "info", "warning", "error"]
    )
    p.add_argument(
        "--drift_reference", default=None, help="drift profile JSON (scripts/drift.py --save_profile)"
    )
    p.add_argument("--drift_window", type=int, default=1000, help="recent requests compared with the profile")
    return p


def check_args(args: argparse.Namespace) -> None:
    """The flags ServerConfig does not check itself; a ValueError names the flag."""
    if args.max_model_len is not None:  # vLLM's one bound on prompt + completion has no single equivalent
        raise ValueError(
            "--max_model_len: this server bounds prompts and completions separately: pass "
            "--max_prompt_tokens and --max_tokens_limit (within the compiled --prompt_buckets and "
            "--new_token_buckets)"
        )
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    step = args.checkpoint_step
    if step is not None and not (step.isdigit() or step in ("latest", "best")):
        raise ValueError(f"--checkpoint_step must be latest, best or a step number, got {step!r}")
    if not 0 < args.drift_window <= MAX_DRIFT_WINDOW:
        raise ValueError(f"--drift_window must be in 1..{MAX_DRIFT_WINDOW}, got {args.drift_window}")
    if args.api_key is not None:
        try:
            check_api_key(args.api_key)
        except ValueError as e:
            raise ValueError(f"--api_key / ${API_KEY_ENV}: {e}") from None


# ServerConfig's field names as the flags that set them, for its error messages.
FLAG_OF_FIELD = {
    "request_timeout_s": "--request_timeout",
    "header_timeout_s": "--header_timeout",
    "body_timeout_s": "--body_timeout",
    "keep_alive_s": "--keep_alive_timeout",
    "batch_wait_ms": "--batch_wait_ms",
    "max_batch": "--max_batch",
    "max_queue": "--max_queue",
    "stream_chunk_tokens": "--stream_chunk_tokens",
    "max_body_bytes": "--max_body_bytes",
    "max_prompt_tokens": "--max_prompt_tokens",
    "max_tokens_limit": "--max_tokens_limit",
    "seed": "--seed",
    "max_logprobs": "--max_logprobs",
}


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The validated settings; an error names the flag at fault."""
    try:
        return ServerConfig(
            model_name=args.served_model_name or default_model_name(args.model),
            engine=args.engine,
            max_batch=args.max_batch,
            batch_buckets=parse_buckets(args.batch_buckets, "--batch_buckets") if args.batch_buckets else (),
            max_queue=args.max_queue,
            batch_wait_ms=args.batch_wait_ms,
            prompt_buckets=parse_buckets(args.prompt_buckets, "--prompt_buckets"),
            new_token_buckets=parse_buckets(args.new_token_buckets, "--new_token_buckets"),
            max_prompt_tokens=args.max_prompt_tokens,
            max_tokens_limit=args.max_tokens_limit,
            request_timeout_s=args.request_timeout,
            stream_chunk_tokens=args.stream_chunk_tokens,
            max_body_bytes=args.max_body_bytes,
            seed=args.seed,
            max_logprobs=args.max_logprobs,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_s=args.keep_alive_timeout,
        )
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        if field in FLAG_OF_FIELD:
            raise ValueError(FLAG_OF_FIELD[field] + str(e)[len(field) :]) from None
        raise


def check_source(model: str, checkpoint_step: str | None) -> None:
    """A missing path, a non-model file, a workdir without checkpoints or a step it lacks fail here."""
    from rlvr_jax.evaluation.evaluate import is_training_run, resolve_checkpoint
    from rlvr_jax.weights import source_kind

    if is_training_run(model):
        resolve_checkpoint(model, checkpoint_step)
        return
    if checkpoint_step is not None:
        raise ValueError(
            f"--checkpoint_step picks a checkpoint of a training workdir, but {model!r} is not one (no "
            "checkpoints/ folder); leave it out, or pass the run's workdir as --model"
        )
    source_kind(model)


def load_source(model: str, checkpoint_step: str | None, dtype: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id, an HF directory, a GGUF file or a training run's checkpoint."""
    from rlvr_jax.evaluation.evaluate import is_training_run, load_training_run
    from rlvr_jax.weights import load_model

    if is_training_run(model):
        step = int(checkpoint_step) if checkpoint_step and checkpoint_step.isdigit() else checkpoint_step
        policy, tokenizer, source = load_training_run(model, step, dtype=dtype)
        logging.getLogger("serve").info(
            "serving checkpoint %s of %s (base model %s)", source["checkpoint_step"], source["checkpoint"],
            source["model"],
        )  # fmt: skip
        return policy, tokenizer
    loaded = load_model(model, dtype=dtype, with_tokenizer=True)
    return loaded.model, loaded.tokenizer


def main(argv: list[str] | None = None) -> int:
    """The `rlvr-serve` command."""
    return fail_cleanly(lambda: serve(argv))


def serve(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    config = server_config(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    drift = None
    if args.drift_reference:  # a bad profile fails now, before the model loads
        from rlvr_jax.monitoring.drift import DriftMonitor, ReferenceProfile

        drift = DriftMonitor(ReferenceProfile.load(args.drift_reference), window=args.drift_window)

    import jax

    from rlvr_jax.serving.app import create_app
    from rlvr_jax.serving.engine import Engine
    from rlvr_jax.serving.server import uvicorn_server

    check_source(args.model, args.checkpoint_step)  # fails now, not after the server has started
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    def load_engine() -> Engine:
        model, tokenizer = load_source(args.model, args.checkpoint_step, args.dtype)
        return Engine.from_loaded(model, tokenizer, config)

    failures: list[BaseException] = []
    server = None

    def on_load_failure(error: BaseException) -> None:
        failures.append(error)
        if server is not None:
            server.should_exit = True

    # Uvicorn drains on SIGTERM / SIGINT, then re-sends the signal to the handler that was there before it;
    # this one turns it into a normal exit, so a graceful shutdown ends with status 0, not "killed".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    app = create_app(config, load_engine, on_load_failure=on_load_failure, drift=drift, api_key=args.api_key)
    server = uvicorn_server(app, config, host=args.host, port=args.port, log_level=args.log_level)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        logging.getLogger("serve").warning(
            "listening on %s without an API key: anyone who can reach this address can use the model "
            "(--api_key or $%s)", args.host, API_KEY_ENV,
        )  # fmt: skip
    server.run()
    if failures:
        raise failures[0]
    return 0


if __name__ == "__main__":
    sys.exit(main())
