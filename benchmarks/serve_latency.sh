#!/usr/bin/env bash
# Latency of the inference server on one machine: starts scripts/serve.py, waits until /ready (every
# bucket compiled), runs benchmarks/load_test.py, stops the server with SIGTERM (it drains first).
#
#   bash benchmarks/serve_latency.sh MODEL OUT.json [CONCURRENCY] [DURATION_S] [MAX_TOKENS]
#   bash benchmarks/serve_latency.sh /root/models/SmolLM2-135M-Instruct.Q4_1.gguf \
#       benchmarks/results/load_test_h100.json 1,4,16,64 15 32
#
# Concurrency 1 gives the single-user numbers (time to first token, time per further token); higher
# levels show batching. MAX_TOKENS may be a list (16,64,256: requests cycle through it); the server's
# new-token bucket is its largest value. Settings from the environment (defaults in brackets):
#   ENGINE [continuous] or static, DTYPE [bfloat16], MAX_BATCH [64], BATCH_BUCKETS [1,4,16,64],
#   MAX_QUEUE [256], PROMPT_BUCKETS [64], CHUNK [4] (--stream_chunk_tokens), WAIT_MS [5]
#   (--batch_wait_ms), PROCESSES [1] (load generator processes), MAX_REQUESTS [500] per level, PORT [8123],
#   SERVER_LOG [/tmp/serve_latency.log], COMPILATION_CACHE [none], PYTHON [python3].
set -euo pipefail
MODEL=${1:?model path}
OUT=${2:?output json}
CONCURRENCY=${3:-1,4,16,64}
DURATION=${4:-15}
MAX_TOKENS=${5:-32}
PORT=${PORT:-8123}
LONGEST=$(tr ',' '\n' <<<"$MAX_TOKENS" | sort -n | tail -1)
SERVER_LOG=${SERVER_LOG:-/tmp/serve_latency.log}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

SERVER_CMD=("$PY" scripts/serve.py --model "$MODEL" --port "$PORT" --host 127.0.0.1
    --engine "${ENGINE:-continuous}" --dtype "${DTYPE:-bfloat16}" --max_batch "${MAX_BATCH:-64}"
    --batch_buckets "${BATCH_BUCKETS:-1,4,16,64}" --max_queue "${MAX_QUEUE:-256}"
    --prompt_buckets "${PROMPT_BUCKETS:-64}" --new_token_buckets "$LONGEST"
    --stream_chunk_tokens "${CHUNK:-4}" --batch_wait_ms "${WAIT_MS:-5}" --log_level warning)
[[ -n "${COMPILATION_CACHE:-}" ]] && SERVER_CMD+=(--compilation_cache "$COMPILATION_CACHE")
"${SERVER_CMD[@]}" >"$SERVER_LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

# Poll /ready until the server says every bucket is compiled (bounded: 10 minutes).
started=$(date +%s)
for _ in $(seq 1 600); do
    if "$PY" - "$PORT" <<'EOF'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
    then break; fi
    kill -0 $SERVER 2>/dev/null || { echo "the server exited before it was ready:" >&2; tail -20 "$SERVER_LOG" >&2; exit 1; }
    sleep 1
done
echo "server ready after $(( $(date +%s) - started )) s (${ENGINE:-continuous} engine)"

"$PY" benchmarks/load_test.py --url "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --max_tokens "$MAX_TOKENS" --processes "${PROCESSES:-1}" \
    --max_requests "${MAX_REQUESTS:-500}" --server_command "${SERVER_CMD[*]}" --out "$OUT"
