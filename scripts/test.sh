#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite:
#   1. the CPU suite (includes a smoke run of the benchmarks),
#   2. the tests that call every CPU kernel again with NUMBA_BOUNDSCHECK=1 (an out-of-bounds index
#      fails them). Numba ignores boundscheck inside parallel prange loops, so the plugin
#      tests/boundscheck_plugin.py compiles the kernels serial; the pass has its own Numba cache
#      (the on-disk cache is keyed on neither flag). docs/robustness.md has the details.
#      Most tests use inputs below the serial thresholds (kernels/config.py); test_determinism.py
#      calls every parallel kernel above its threshold, so it must stay in this list (the plugin's
#      last line says how many of the parallel kernels ran).
#   3. the CUDA kernels in Numba's CUDA simulator, in their own process (the simulator must be
#      switched on before numba is imported).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
$PY -m pytest -q "$@"
NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=build/numba-boundscheck PYTHONPATH=tests \
    $PY -m pytest -q -p boundscheck_plugin tests/test_dropout.py tests/test_philox.py \
    tests/test_hostile.py tests/test_determinism.py tests/test_properties.py tests/test_linear.py \
    tests/test_dropconnect.py tests/test_variants.py tests/test_half.py tests/test_tiled_layouts.py \
    tests/test_prefetch_path.py tests/test_native_grouped.py tests/test_group_runs.py "$@"
NUMBA_ENABLE_CUDASIM=1 $PY -m pytest -q tests/cuda "$@"
