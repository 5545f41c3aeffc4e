#!/usr/bin/env bash
# Static against continuous batching on one GPU, in one device call (about 7 minutes): for each engine,
# start scripts/serve.py, wait for /ready, run benchmarks/load_test.py at 1, 16, 64 and 256 clients
# (benchmarks/serve_latency.sh), stop it. Same machine, same call, same settings but --engine.
#
#   source benchmarks/gpu_setup.sh && bash benchmarks/serve_h200.sh [MODEL] [OUT_DIR]
#
# MODEL: a GGUF file or an HF directory, or random:SHAPE (the default, random:qwen2.5-0.5b): random weights
# of a benchmarks/rollout.py shape with the tokenizer in $TOKENIZER (default .stage/qwen2.5-tokenizer,
# carried), written once as an HF directory under /root/models. Random weights almost never emit a stop
# token, so every answer runs to its max_tokens and both engines generate the same lengths: requests cycle
# through 16, 64 and 256 new tokens, so short answers share the server with long ones (where the engines
# differ). With the real SmolLM2 GGUF (staged, see /work/shared/GPU.md) answers end at the model's stop
# token instead. Needs the serving wheels in .whl (fastapi, starlette, uvicorn, h11, pydantic,
# pydantic-core, annotated-types, annotated-doc, typing-inspection, anyio, sniffio, httpx, httpcore, idna,
# certifi, click; gguf for a GGUF model), which gpu_setup.sh installs.
# Writes OUT_DIR/load_test_h200_{static,continuous}.json (default $OUT when set, else benchmarks/results).
# Environment: DURATION [20] seconds per level, CONCURRENCY [1,16,64,256], MAX_TOKENS [16,64,256],
# CHUNK [8] (tokens per device call and streamed chunk), ENGINES [static continuous].
set -euo pipefail
MODEL=${1:-random:qwen2.5-0.5b}
OUT_DIR=${2:-${OUT:-benchmarks/results}}
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"

if [[ $MODEL == random:* ]]; then
    SHAPE=${MODEL#random:}
    DIR=/root/models/random-$SHAPE
    if [[ ! -f $DIR/config.json ]]; then
        "${PYTHON:-python3}" - "$SHAPE" "${TOKENIZER:-.stage/qwen2.5-tokenizer}" "$DIR" <<'EOF'
import sys
from pathlib import Path
from benchmarks.grpo_step import random_model_dir
random_model_dir(sys.argv[1], sys.argv[2], Path(sys.argv[3]), "bfloat16")
EOF
    fi
    MODEL=$DIR
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for engine in ${ENGINES:-static continuous}; do
    ENGINE=$engine DTYPE=bfloat16 MAX_BATCH=256 BATCH_BUCKETS=1,16,64,256 MAX_QUEUE=1024 PROMPT_BUCKETS=64 \
        CHUNK=${CHUNK:-8} PROCESSES=4 MAX_REQUESTS=20000 SERVER_LOG="$OUT_DIR/serve_h200_$engine.log" \
        COMPILATION_CACHE=${JAX_COMPILATION_CACHE_DIR:-/root/jax_cache} \
        bash benchmarks/serve_latency.sh "$MODEL" "$OUT_DIR/load_test_h200_$engine.json" \
        "${CONCURRENCY:-1,16,64,256}" "${DURATION:-20}" "${MAX_TOKENS:-16,64,256}"
done
