#!/usr/bin/env bash
# One GRPO learning run on the GPU machine, resumable across device calls, with its evidence copied out.
#
#   benchmarks/learning_run.sh NAME [train.py flags...]
#
# Runs scripts/train.py with --workdir=$RUNS/NAME (RUNS default /root/runs) under a wall-clock budget of
# $BUDGET seconds (default 540, inside the device's 10-minute call limit): at the budget the trainer gets
# SIGTERM, saves a checkpoint and exits, and the same command in the next call resumes from it. Copies
# what the results need to $OUT/NAME.tgz: config, metrics.jsonl, summary, reward curve, the log, the
# before / after evaluations (metrics.json, samples.jsonl) and the comparison report with its plots.
set -uo pipefail
name=$1; shift
runs=${RUNS:-/root/runs}
budget=${BUDGET:-540}
mkdir -p "$runs"
start=$(date +%s)
mkdir -p "$runs/$name" && echo "$(date -u +%FT%TZ) BUDGET=$budget benchmarks/learning_run.sh $name $*" >> "$runs/$name/commands.txt"
timeout -s TERM -k 60 "$budget" python3 scripts/train.py --workdir="$runs/$name" "$@" 2>&1 | tee -a "$runs/$name.log" | grep -v "^[IW][0-9]" | tail -25
echo "train.py exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
if [[ -n ${OUT:-} ]]; then  # one archive: the device returns few files and no deep folders
  cp "$runs/$name.log" "$runs/$name/train.log" 2>/dev/null
  tar czf "$OUT/$name.tgz" -C "$runs" --exclude=checkpoints --exclude=tensorboard "$name"
fi
