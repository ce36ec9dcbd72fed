#!/usr/bin/env bash
# Many-chain lynx-hare NUTS on one accelerator (see benchmarks/gpu_lynx_hare.py), as one
# command for a GPU machine with JAX installed. Writes results_gpu_lynx_hare.json (and the
# log) to ${OUT:-benchmarks}. Extra arguments go to the script, e.g.
#   benchmarks/gpu_lynx_hare.sh --chains 1 64 1024 --warmup 500 --samples 500
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/gpu_lynx_hare.py \
    --out "$out/results_gpu_lynx_hare.json" "$@" 2>&1 | tee "$out/gpu_lynx_hare.log"
