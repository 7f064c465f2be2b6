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
# The pins are for Python >= 3.11 (numpy 2.4.6 and cuda-bindings 13.5 have no 3.10 wheels); pip's
# own message for it, a ResolutionImpossible over numpy<2.5 and ==2.4.6, does not say so (a review).
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "scripts/setup.sh: ci/constraints.txt pins packages that need Python >= 3.11, got $("$PY" -V 2>&1);" \
         "set PYTHON to a newer python3, or (fastdrop itself runs on 3.10) pip install -e '.[torch,test]' without the pins" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fastdrop-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ci/constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c ci/constraints.txt -e ".[torch,test,ci]"
    touch "$stamp"
fi
