#!/usr/bin/env bash
# Background jobs on the lent GPU machine: work that outlasts one device call (10 minutes) and runs while
# later calls stage model chunks. A warm machine keeps a process that started its own session (setsid)
# until the machine goes back (30 minutes after its start at most), so each job runs from a private copy
# of the checkout made when it starts (/root/src/NAME: the next call's copy of the working tree does not
# change its scripts under it) and leaves its log and exit status in /root/bg.
#
#   source benchmarks/gpu_setup.sh
#   bash benchmarks/device_bg.sh start NAME 'COMMAND'   # COMMAND runs in /root/src/NAME with gpu_setup's env
#   bash benchmarks/device_bg.sh wait NAME [SECONDS]     # until NAME ends (or SECONDS pass)
#   bash benchmarks/device_bg.sh stop NAME [SECONDS]     # SIGTERM to its process group, SIGKILL after SECONDS
#   bash benchmarks/device_bg.sh status                  # each job: running / exit code, last log lines
#   bash benchmarks/device_bg.sh collect [PATTERN]       # /root/out_bg files (and logs) into $OUT
#
# A job writes what should come back under /root/out_bg (at most 8 files per call come back: pack them).
set -uo pipefail
bg=/root/bg
mkdir -p $bg /root/out_bg
cmd=${1:?usage: device_bg.sh start NAME COMMAND | wait NAME [S] | stop NAME [S] | status | collect [PATTERN]}; shift
case $cmd in
  start)
    name=${1:?job name}; shift
    src=/root/src/$name  # the job's own copy: nothing a later call does to the checkout reaches it
    if [[ -f $bg/$name.pid ]] && kill -0 "$(cat $bg/$name.pid)" 2>/dev/null; then
      echo "$name is still running: 'device_bg.sh stop $name' first" >&2; exit 1
    fi
    rm -rf "$src" && mkdir -p "$src" && cp -r . "$src/"
    rm -f $bg/$name.rc $bg/$name.pid
    # The job writes its own pid: under job control (set -m, as the device's shell runs commands) a
    # background command leads its own process group, so setsid forks and $! would be a parent that has
    # already exited; the pid from inside is the new session's leader, whose group `stop` signals.
    (cd "$src" && PYTHONUNBUFFERED=1 setsid nohup bash -c "echo \$\$ > $bg/$name.pid; export PYTHONPATH=/tmp/site:$src; $*; echo \$? > $bg/$name.rc" \
      > $bg/$name.log 2>&1 < /dev/null &)
    t=0; while [[ ! -s $bg/$name.pid && $t -lt 50 ]]; do sleep 0.1; t=$((t + 1)); done
    echo "started $name (pid $(cat $bg/$name.pid 2>/dev/null)) at $(date -u +%T)" ;;
  wait)
    name=${1:?job name}; limit=${2:-100000}; t=0
    while [[ ! -f $bg/$name.rc && $t -lt $limit ]]; do sleep 5; t=$((t + 5)); done
    [[ -f $bg/$name.rc ]] && echo "$name ended: exit $(cat $bg/$name.rc)" || echo "$name still running after ${limit}s" ;;
  stop)  # SIGTERM to the job's process group (train.py then checkpoints at the end of its step), SIGKILL
    # after SECONDS (default 60)
    name=${1:?job name}; limit=${2:-60}; pid=$(cat $bg/$name.pid)
    kill -TERM -- -"$pid" 2>/dev/null; t=0
    while kill -0 -- -"$pid" 2>/dev/null && [[ $t -lt $limit ]]; do sleep 2; t=$((t + 2)); done
    kill -KILL -- -"$pid" 2>/dev/null; [[ -f $bg/$name.rc ]] || echo stopped > $bg/$name.rc
    echo "$name stopped after ${t}s" ;;
  status)
    for log in $bg/*.log; do
      [[ -f $log ]] || continue
      name=$(basename "$log" .log)
      state=running; [[ -f $bg/$name.rc ]] && state="exit $(cat $bg/$name.rc)"
      echo "== $name: $state"
      grep -v "^[IW][0-9]" "$log" | tail -${LINES_PER_JOB:-3}
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null ;;
  collect)
    : "${OUT:?collect needs OUT}"
    tar czf "$OUT/bg_logs.tgz" -C $bg . 2>/dev/null
    n=0
    for f in /root/out_bg/${1:-*}; do
      [[ -f $f && $n -lt 7 ]] || continue
      cp "$f" "$OUT/" && n=$((n + 1))
    done
    ls -la "$OUT" ;;
  *) echo "unknown command $cmd (start | wait | stop | status | collect)" >&2; exit 2 ;;
esac
