#!/bin/sh
# Starts the inference server from environment variables, the one place that compose files, Kubernetes
# ConfigMaps and `docker run -e` all configure, so the server, the HEALTHCHECK and the orchestrator's
# probes agree on one PORT. Arguments given to the container are passed on to serve.py after these.
set -eu
if [ -z "${MODEL:-}" ]; then
    echo "error: set MODEL to a .gguf file or Hugging Face directory (mounted under /models) or a hub id," \
        "e.g. -e MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf" >&2
    exit 2
fi
exec python "${APP_DIR:-/app}/scripts/serve.py" \
    --model "$MODEL" \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --max_batch "${MAX_BATCH:-8}" \
    --max_queue "${MAX_QUEUE:-64}" \
    --dtype "${DTYPE:-float32}" \
    --compilation_cache "${JAX_CACHE_DIR:-/home/rlvr/.cache/jax}" \
    "$@"
