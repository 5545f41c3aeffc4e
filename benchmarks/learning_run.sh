#!/usr/bin/env bash
# One GRPO learning run on the GPU machine, resumable across device calls, with its evidence copied out.
#
#   benchmarks/learning_run.sh NAME [train.py flags...]
#
# Runs scripts/train.py with --workdir=$RUNS/NAME (RUNS default /root/runs) under a wall-clock budget of
# $BUDGET seconds (default 540, inside the device's 10-minute call limit): at the budget the trainer gets
# SIGTERM, saves a checkpoint and exits, and the same command in the next call resumes from it. Copies
# what the results need to $OUT/NAME: config, metrics.jsonl, summary, reward curve, the before / after
# evaluations (metrics.json, samples.jsonl) and the comparison report with its plots.
set -uo pipefail
name=$1; shift
runs=${RUNS:-/root/runs}
budget=${BUDGET:-540}
mkdir -p "$runs"
start=$(date +%s)
timeout -s TERM -k 60 "$budget" python3 scripts/train.py --workdir="$runs/$name" "$@" 2>&1 | tee "$runs/$name.log" | grep -v "^[IW][0-9]" | tail -25
echo "train.py exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
if [[ -n ${OUT:-} ]]; then
  dest=$OUT/$name; mkdir -p "$dest"
  w=$runs/$name
  cp "$runs/$name.log" "$dest/train.log" 2>/dev/null
  for f in config.json metrics.jsonl summary.json reward_curve.png; do cp "$w/$f" "$dest/" 2>/dev/null; done
  for d in before after; do
    [[ -d $w/eval/$d ]] && mkdir -p "$dest/eval/$d" && cp "$w/eval/$d/"* "$dest/eval/$d/"
  done
  [[ -d $w/eval/compare ]] && mkdir -p "$dest/eval/compare" && cp "$w/eval/compare/"* "$dest/eval/compare/"
fi
