#!/usr/bin/env bash
# Create .venv (once) and install fastdrop with its test/bench extras and the `ci` extra (NVVM, ptxas,
# NVRTC and cudart wheels for tests/cuda/test_nvvm_compile.py: the CUDA compile gate needs no GPU).
# ci/constraints.txt pins exact versions: torch to the CPU build (2.13.0+cpu), so pip never resolves
# the multi-GB CUDA build, and the CUDA compile toolchain. Without the +cpu wheel at hand, run with
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (PyPI has none). Reinstalls only when pyproject.toml or the
# constraints changed since the last install (idempotent).
# With a GPU, install your own CUDA torch first and use `pip install -e ".[torch,test,cuda12]"`
# (or cuda13, matching torch's CUDA), without the constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fastdrop-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ci/constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c ci/constraints.txt -e ".[torch,test,ci]"
    touch "$stamp"
fi
