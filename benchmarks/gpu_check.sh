#!/usr/bin/env bash
# The slideseg GPU check: one prepared run, at most 8 minutes, installs nothing.
# Needs python3 with torch (CUDA build) and numpy; predict's own dependencies (zarr, tifffile, dask,
# distributed) only for the end-to-end section, which says "not run" without them.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT if set, else benchmarks/out/
#
# See benchmarks/gpu_check.py for what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PY=.venv/bin/python
fi
RESULTS=${OUT:-benchmarks/out}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
    > "$RESULTS/nvidia-smi.csv" 2>&1 || true
# 470 s hard stop; the script keeps to --budget 450 and saves after every section.
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} timeout 470 "$PY" benchmarks/gpu_check.py --out "$RESULTS" "$@"
