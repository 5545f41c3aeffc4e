#!/usr/bin/env bash
# Set-up on the lent GPU machine (no network): install the carried wheels, place the carried data and a
# bubblewrap for the code sandbox. Source it at the start of each device call:
#   source benchmarks/gpu_setup.sh
# Expects (carried, git-ignored): .whl/ (from ../shared/tools/device-wheels), .stage/<dataset>/ folders,
# .stage/bwrap/ (bwrap and the three libraries it links, copied from a Debian machine). Idempotent: a warm
# machine keeps /tmp/site, /root/data and /root/bwrap between calls.
if [[ -d .whl && ! -f /tmp/site/.done ]]; then
  # compgen: only the patterns that match (a carried set without source archives has no .tar.gz).
  python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site \
    $(compgen -G '.whl/*.whl') $(compgen -G '.whl/*.tar.gz') >/tmp/pip.log 2>&1 \
    && touch /tmp/site/.done || tail -5 /tmp/pip.log
fi
mkdir -p /root/data /root/models
for d in .stage/*/; do
  d=${d%/}; n=${d#.stage/}
  case $n in bwrap|*.gguf) ;; *) [[ -d /root/data/$n ]] || cp -r "$d" /root/data/ ;; esac
done
if [[ -f .stage/bwrap/bwrap && ! -x /root/bwrap/bwrap ]]; then
  mkdir -p /root/bwrap && cp .stage/bwrap/* /root/bwrap/ && mv /root/bwrap/bwrap /root/bwrap/bwrap.bin
  printf '#!/bin/sh\nLD_LIBRARY_PATH=/root/bwrap exec /root/bwrap/bwrap.bin "$@"\n' > /root/bwrap/bwrap
  chmod +x /root/bwrap/bwrap /root/bwrap/bwrap.bin
fi
export PATH=/root/bwrap:$PATH PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/root/jax_cache
