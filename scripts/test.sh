#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite:
#   1. the CPU suite (includes a smoke run of the benchmarks),
#   2. the CUDA kernels in Numba's CUDA simulator, in their own process (the simulator must be
#      switched on before numba is imported).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
$PY -m pytest -q "$@"
NUMBA_ENABLE_CUDASIM=1 $PY -m pytest -q tests/cuda "$@"
