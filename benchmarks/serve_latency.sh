#!/usr/bin/env bash
# Latency of the inference server on one machine: starts scripts/serve.py, waits until /ready (every
# bucket compiled), runs benchmarks/load_test.py, stops the server with SIGTERM (it drains first).
#
#   bash benchmarks/serve_latency.sh MODEL OUT.json [CONCURRENCY] [DURATION_S] [MAX_TOKENS]
#   bash benchmarks/serve_latency.sh /root/models/SmolLM2-135M-Instruct.Q4_1.gguf \
#       benchmarks/results/load_test_h100.json 1,4,16,64 15 32
#
# Concurrency 1 gives the single-user numbers (time to first token, time per further token); higher
# levels show batching. The server runs bf16 on a GPU, with batch buckets up to 64 rows.
set -euo pipefail
MODEL=${1:?model path}
OUT=${2:?output json}
CONCURRENCY=${3:-1,4,16,64}
DURATION=${4:-15}
MAX_TOKENS=${5:-32}
PORT=${PORT:-8123}
cd "$(dirname "$0")/.."

python scripts/serve.py --model "$MODEL" --port "$PORT" --host 127.0.0.1 --max_batch 64 \
    --batch_buckets 1,4,16,64 --max_queue 256 --prompt_buckets 64 --new_token_buckets "$MAX_TOKENS" \
    --stream_chunk_tokens 4 --log_level warning &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

# Poll /ready until the server says every bucket is compiled (bounded: 10 minutes).
for _ in $(seq 1 600); do
    if python - "$PORT" <<'EOF'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
    then break; fi
    kill -0 $SERVER 2>/dev/null || { echo "the server exited before it was ready" >&2; exit 1; }
    sleep 1
done

python benchmarks/load_test.py --url "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --max_tokens "$MAX_TOKENS" --out "$OUT"
