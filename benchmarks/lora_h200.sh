#!/usr/bin/env bash
# LoRA against full fine-tuning, one train step at two model sizes, in one device call:
#   source benchmarks/gpu_setup.sh && bash benchmarks/lora_h200.sh
# qwen2.5-1.5b and qwen2.5-7b (random weights, real shapes), 512-token rows, 16384 tokens per step (32
# rows), remat full, LoRA rank 0 (full fine-tuning) and 16 (alpha 16, every projection), 3 timed steps
# after the compiling one. Each configuration runs in a process of its own (benchmarks/train_step.py),
# so the 7B full fine-tune, which cannot fit (float32 masters + Adam: 16 bytes x 7.6B parameters), is
# recorded as out of memory and the sweep goes on. Writes
# benchmarks/results/lora_train_step_$CARD.json (CARD: h100 or h200, from nvidia-smi unless set), and a
# copy to $OUT when set (what the device call brings back). The memory a configuration may use is the
# allocator's limit (device_memory_limit_gb in each result): 0.75 of the card unless
# XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise, as in the trainer's runs. BUDGET (default 540 s) bounds
# the sweep and TIMEOUT (default 300 s) each configuration. Measured 2026-12-06 on an H100 80GB (the H200
# was not lent): 86 s for the call; 1.5B full 31.1 GB / 0.402 s, rank 16 12.3 GB / 0.366 s; 7B full out
# of memory at init (30 GB masters + 61 GB Adam > 63.8 GB), rank 16 26.8 GB / 1.238 s
# (benchmarks/results/lora_train_step_h100.json). XLA's CPU estimates had been 43.3 / 22.2 / 60.3 GB.
set -uo pipefail
card=${CARD:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o 'H[0-9][0-9]*' | head -1 | tr H h)}
card=${card:-cpu}
result=benchmarks/results/lora_train_step_$card.json
python3 benchmarks/train_step.py --shape qwen2.5-1.5b qwen2.5-7b --seq 512 --tokens 16384 --remat full \
  --lora_rank 0 16 --lora_alpha 16 --repeats 3 --timeout "${TIMEOUT:-300}" \
  --budget_s "${BUDGET:-540}" --out "$result" \
  2>&1 | grep -v "^[IW][0-9]" | cut -c1-600
status=${PIPESTATUS[0]}
python3 - "$result" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["device"])
for x in r["results"]:
    mem = (x.get("compiled_memory") or {}).get("peak_gb")
    print(f"{x['shape']:>13} lora {x['lora_rank']:>2}: trainable {x.get('trainable_params', 0) / 1e6:8.1f}M  "
          f"optimizer {x.get('optimizer_state_bytes', 0) / 1e9:6.2f} GB  "
          + (f"step {x['step_s']} s  {x['tokens_per_s']} tok/s  MFU {x['mfu']}  compiled peak {mem} GB  "
             f"device peak {x['process_peak_memory_gb']} GB" if "step_s" in x
             else f"{x['error']} ({x.get('stage')})"))
PY
[[ -n ${OUT:-} ]] && cp "$result" "$OUT/"
exit "$status"
