#!/usr/bin/env bash
# The whole-step benchmark's arms in one device call (see benchmarks/README.md, "The whole GRPO step"):
#   bash benchmarks/grpo_step_h200.sh OUT_DIR [ARM ...]
# Arms: before (the sampler reads the float32 masters), after (the trainer's bf16 copy for the sampler),
# probe (after, with the memory probe's fewest micro-batches and remat dots), 1.5b (after, qwen2.5-1.5b),
# none2 / dots2 / full2 (after, remat none / dots / full at 2 micro-batches of 128 rows: the H200's 141 GB
# holds what the H100's 80 needed 4 for), none1 (no remat, one pass of 256 rows), warm4 (after, with the
# warm-up's compiles 4 at a time: train.warmup_threads=4 against the default 1; compare compile_s), warm6
# (6 at a time: GSM8K's 3 sampler buckets and 3 update widths all at once), upfront (after, with every
# bucket compiled before step 1: train.warmup_background=0, the warm-up before 2026-12-08; `after`
# compiles step 1's bucket before it and the others in the background).
# Expects benchmarks/gpu_setup.sh's carried .whl, .stage/gsm8k and .stage/qwen2.5-tokenizer.
set -euo pipefail
out=${1:?usage: grpo_step_h200.sh OUT_DIR [ARM ...]}; shift
arms=("${@:-before after}")
# The card's name in the files (h200, or h100 where an H100 ran it): CARD=... to set it.
card=${CARD:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o 'H[0-9][0-9]*' | head -1 | tr H h)}
card=${card:-cpu}
common=(--prompts 32 --group 8 --new_tokens 256 --steps 8 --tokenizer .stage/qwen2.5-tokenizer --data .stage/gsm8k)
for arm in ${arms[@]}; do
  case $arm in
    before) extra=(--shape qwen2.5-0.5b --sampler_params master) ;;
    after) extra=(--shape qwen2.5-0.5b) ;;
    warm4|warm6) extra=(--shape qwen2.5-0.5b --warmup_threads ${arm#warm} --warmup_background 0) ;;
    upfront) extra=(--shape qwen2.5-0.5b --warmup_background 0) ;;
    probe) extra=(--shape qwen2.5-0.5b --micro_batches 0 --remat dots) ;;
    1.5b) extra=(--shape qwen2.5-1.5b) ;;
    none2|dots2|full2|none1) extra=(--shape qwen2.5-0.5b --remat ${arm%?} --micro_batches ${arm: -1}) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  echo "== $arm: ${extra[*]}"
  # Each arm compiles cold, in an empty persistent cache of its own: compile_s and the first steps of an
  # arm must not be another arm's cache hits (the 2026-12-04 first steps probably were).
  cache=$(mktemp -d /tmp/jax_cache_$arm.XXXX)
  JAX_COMPILATION_CACHE_DIR=$cache python3 benchmarks/grpo_step.py "${common[@]}" "${extra[@]}" --out "$out/grpo_step_${arm}_$card.json" \
    > "$out/grpo_step_${arm}.log" 2>&1 || { tail -20 "$out/grpo_step_${arm}.log"; continue; }
  python3 - "$out/grpo_step_${arm}_$card.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"step {r['step_s']} s  sample {r['components_s']['sample']} s  update {r['components_s']['update']} s "
      f"(MFU {r.get('update_mfu')})  overhead {r['overhead_fraction']}  first {r['first_steps_s']}  "
      f"compile {r.get('compile_s')} s  waits {r.get('compile_wait_s')}")
PY
done
