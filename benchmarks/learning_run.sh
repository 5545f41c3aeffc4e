#!/usr/bin/env bash
# One GRPO learning run on the GPU machine, resumable across device calls, with its evidence copied out.
#
#   benchmarks/learning_run.sh NAME [train.py flags...]
#
# Runs scripts/train.py with --workdir=$RUNS/NAME (RUNS default /root/runs) under a wall-clock budget of
# $BUDGET seconds (default 540, inside the device's 10-minute call limit): at the budget the trainer gets
# SIGTERM, saves a checkpoint and exits, and the same command in the next call resumes from it. Copies
# what the results need to $OUT/NAME.tgz: config, metrics.jsonl, summary, reward curve, the log, the
# before / after evaluations (metrics.json, samples.jsonl), the comparison report with its plots, and the
# card and library versions (versions.json).
set -uo pipefail
name=$1; shift
runs=${RUNS:-/root/runs}
budget=${BUDGET:-540}
mkdir -p "$runs"
start=$(date +%s)
mkdir -p "$runs/$name" && echo "$(date -u +%FT%TZ) BUDGET=$budget benchmarks/learning_run.sh $name $*" >> "$runs/$name/commands.txt"
[[ -f $runs/$name/versions.json ]] || python3 - "$runs/$name/versions.json" <<'PY'
import importlib.metadata as md, json, shutil, subprocess, sys
smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
card = subprocess.run(smi, capture_output=True, text=True).stdout.strip() if shutil.which(smi[0]) else None
libs = {}
for n in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers"):
    try:
        libs[n] = md.version(n)
    except md.PackageNotFoundError:
        libs[n] = None
json.dump({"device": card, "versions": libs}, open(sys.argv[1], "w"), indent=1)
PY
timeout -s TERM -k 60 "$budget" python3 scripts/train.py --workdir="$runs/$name" "$@" 2>&1 | tee -a "$runs/$name.log" | grep -v "^[IW][0-9]" | tail -25
echo "train.py exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
if [[ -n ${OUT:-} ]]; then  # one archive: the device returns few files and no deep folders
  cp "$runs/$name.log" "$runs/$name/train.log" 2>/dev/null
  tar czf "$OUT/$name.tgz" -C "$runs" --exclude=checkpoints --exclude=tensorboard "$name"
fi
